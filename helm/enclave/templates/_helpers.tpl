{{/*
Names, labels, images, security contexts and the settings file shared by every template.
*/}}

{{- define "enclave.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "enclave.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>", kept within the 63 characters of a DNS label. */}}
{{- define "enclave.componentName" -}}
{{- printf "%s-%s" (include "enclave.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}

{{- define "enclave.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of a component: call with (dict "root" $ "component" "api"). */}}
{{- define "enclave.labels" -}}
helm.sh/chart: {{ include "enclave.chart" .root }}
{{ include "enclave.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: enclave
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "enclave.selectorLabels" -}}
app.kubernetes.io/name: {{ include "enclave.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every pod of this release (for the default-deny policy). */}}
{{- define "enclave.releaseSelector" -}}
app.kubernetes.io/name: {{ include "enclave.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "enclave.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "enclave.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {registry, repository, tag, digest}; the digest wins over the tag. */}}
{{- define "enclave.imageRef" -}}
{{- $img := .image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" $img.registry) $img.repository }}{{ end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .default $img.tag | toString) -}}
{{- end -}}
{{- end }}

{{- define "enclave.image" -}}
{{- include "enclave.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) }}
{{- end }}

{{/* The restricted pod security context every pod gets. */}}
{{- define "enclave.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The restricted container security context every container (and init container) gets. */}}
{{- define "enclave.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment that keeps every library offline, with its caches in the /tmp emptyDir. */}}
{{- define "enclave.offlineEnv" -}}
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
- name: HF_DATASETS_OFFLINE
  value: "1"
- name: ANONYMIZED_TELEMETRY
  value: "False"
- name: DO_NOT_TRACK
  value: "1"
- name: HOME
  value: /tmp
- name: HF_HOME
  value: /tmp/hf
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: MPLCONFIGDIR
  value: /tmp/mpl
{{- end }}

{{/* Internal URLs of the chart's own services. */}}
{{- define "enclave.chromaUrl" -}}
{{- printf "http://%s:%d" (include "enclave.componentName" (dict "root" . "component" "chroma")) (int .Values.chroma.port) }}
{{- end }}

{{- define "enclave.modelServerUrl" -}}
{{- printf "http://%s:%d" (include "enclave.componentName" (dict "root" . "component" "model-server")) (int .Values.modelServing.enclave.port) }}
{{- end }}

{{- define "enclave.vllmUrl" -}}
{{- printf "http://%s:%d/v1" (include "enclave.componentName" (dict "root" . "component" "vllm")) (int .Values.modelServing.vllm.port) }}
{{- end }}

{{/*
Enclave's settings file (ENCLAVE_CONFIG): `.Values.config` with what the chart decides on top:
where data and the baked model cache live, how to bind, which backend and Chroma to use.
Secrets (database and Redis URLs, API keys) never appear here: they come from Secrets.
*/}}
{{- define "enclave.settings" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $chart := dict "data_dir" "/data" "server" (dict "host" "0.0.0.0" "port" (int .Values.api.port)) -}}
{{- $models := dict "cache_dir" .Values.image.modelCacheDir -}}
{{- $mode := .Values.modelServing.mode -}}
{{- if eq $mode "local" }}{{ $_ := set $models "backend" "local" }}{{ end -}}
{{- if eq $mode "enclave" }}{{ $_ := set $models "backend" "tgi" }}{{ $_ := set $models "url" (include "enclave.modelServerUrl" .) }}{{ end -}}
{{- if eq $mode "vllm" }}{{ $_ := set $models "backend" "openai" }}{{ $_ := set $models "url" (include "enclave.vllmUrl" .) }}{{ end -}}
{{- $_ := set $chart "models" $models -}}
{{- if .Values.chroma.enabled }}{{ $_ := set $chart "rag" (dict "chroma_url" (include "enclave.chromaUrl" .)) }}{{ end -}}
{{- toYaml (mustMergeOverwrite $cfg $chart) }}
{{- end }}

{{/* The Secret holding database-url, redis-url and model-api-key, if any. */}}
{{- define "enclave.credentialsSecret" -}}
{{- default (include "enclave.componentName" (dict "root" . "component" "credentials")) .Values.secrets.existingSecret }}
{{- end }}

{{- define "enclave.hasCredentials" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.databaseUrl .Values.secrets.redisUrl .Values.secrets.modelApiKey }}true{{ end }}
{{- end }}

{{- define "enclave.apiKeysSecret" -}}
{{- default (include "enclave.componentName" (dict "root" . "component" "api-keys")) .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "enclave.hasApiKeys" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}true{{ end }}
{{- end }}

{{/* The claim holding LoRA adapters, when one is configured. */}}
{{- define "enclave.adaptersClaim" -}}
{{- if .Values.adapters.existingClaim }}
{{- .Values.adapters.existingClaim }}
{{- else if .Values.adapters.persistence.enabled }}
{{- include "enclave.componentName" (dict "root" . "component" "adapters") }}
{{- end }}
{{- end }}

{{- define "enclave.dataClaim" -}}
{{- if .Values.persistence.existingClaim }}
{{- .Values.persistence.existingClaim }}
{{- else if .Values.persistence.enabled }}
{{- include "enclave.componentName" (dict "root" . "component" "data") }}
{{- end }}
{{- end }}

{{/* The DNS egress rule every pod of the release gets. */}}
{{- define "enclave.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.dns.namespaceLabels | nindent 10 }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.dns.podLabels | nindent 10 }}
  ports:
    - protocol: UDP
      port: {{ .Values.networkPolicy.dns.port }}
    - protocol: TCP
      port: {{ .Values.networkPolicy.dns.port }}
{{- end }}
