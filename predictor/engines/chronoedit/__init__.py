"""The ``chronoedit`` engine (ChronoEdit-14B with NVIDIA's Upscaler LoRA), one job per module:
:mod:`.engine` renders requests, :mod:`.model` finds weights and LoRA files, :mod:`.loader` starts
it (straight to the device, with :mod:`.prompt_cache` and :mod:`.compile_cache`), :mod:`.fp8` is
``--precision fp8``. Import from the modules: the package itself stays empty so that
:mod:`predictor.engines.safety` can use :mod:`.model` without loading the engine."""
