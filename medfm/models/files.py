"""Names of a medfm checkpoint directory's files and its format marker (no torch: the CLI's
light paths, the column rule and index fingerprints read them; :mod:`.multimodal` re-exports them)."""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "medfm"
FORMAT_VERSION = 1
