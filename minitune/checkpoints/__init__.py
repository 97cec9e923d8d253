"""Checkpoint I/O: a model name to local files (hub.py), the weight formats (weights.py for safetensors and .bin,
gguf.py and gguf_llama.py for GGUF), loading into our modules (load.py), saving in the Hub layout (save.py), atomic
writes (atomic.py), and a run directory's own files (rundir.py)."""
