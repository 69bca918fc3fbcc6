"""The bottom layer: errors, emotion vocabulary, tensor specs, atomic files and digests, the cache
root, devices and threads, versions, progress events, optional imports. Imports nothing of fertk."""
