"""Request LoRAs for the chronoedit engine (docs/loras.md): where they come from
(:mod:`.sources`), how they are read, checked, converted and cached (:mod:`.prepare`), the key
formats they arrive in (:mod:`.formats`) and the one stacked low-rank pair per layer they are
copied into, beside the merged Upscaler LoRA (:mod:`.slots`)."""
