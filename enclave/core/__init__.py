"""The foundation: settings, errors, protocols (the seams), events, files. Imports nothing of Enclave's."""
