"""The manifest: the commit point of an artifact, and data read back from storage."""

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
# Every artifact's files live under a generation folder named g-<UTC stamp>-<hex>.
GENERATION_PREFIX = "g-"
