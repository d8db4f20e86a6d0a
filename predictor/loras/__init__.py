"""Request LoRAs for the chronoedit engine (docs/loras.md): where they come from
(:mod:`.sources`), how they are read, checked, converted and cached (:mod:`.prepare`), the key
formats they arrive in (:mod:`.formats`) and the compile-safe slots they are copied into
(:mod:`.slots`)."""
