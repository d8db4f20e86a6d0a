"""``chrono-upscaler make-tiny-model DIR``: a tiny random ChronoEdit upscaler, built offline.

Real diffusers/transformers classes with tiny configs and seeded random weights, saved in the
same layout as NVIDIA's repositories, so tests (and anyone without a GPU or a 60 GB download)
load it through exactly the production code path::

    DIR/                                    like nvidia/ChronoEdit-14B-Diffusers
      model_index.json  transformer/  vae/  text_encoder/  tokenizer/
      image_encoder/  image_processor/  scheduler/
      lora/chronoedit_distill_lora.safetensors      (a tiny stand-in for the 8-step LoRA)
      upsample_lora_diffusers.safetensors           (like nvidia/…-Upscaler-Lora, merged in)
      safety_checker/                               (only with --with-safety-checker)

The transformer is the Wan2.1-I2V layout shrunk (2 heads × 12, ``image_dim`` 16,
``added_kv_proj_dim`` 24); the text encoder is a 2-layer UMT5 whose tokenizer is a Unigram
model built with ``tokenizers``. The build is deterministic: the same seed gives the same files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from predictor.engines.chronoedit.model import (
    DISTILL_LORA_FILE,
    FLOW_SHIFT,
    MAX_SEQUENCE_LENGTH,
    UPSCALER_LORA_FILE,
    UPSCALER_PROMPT,
)

TEXT_DIM = 16  # UMT5 d_model = the transformer's text_dim
IMAGE_DIM = 16  # CLIP hidden size = the transformer's image_dim
HEADS, HEAD_DIM = 2, 12  # inner dim 24 = added_kv_proj_dim, as 5120 is in the 14B model
LORA_RANK = 4
#: the modules NVIDIA's LoRAs train (q, k, v, o and the FFN of both attentions), diffusers names
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
SAFETY_DIR = "safety_checker"


def _tokenizer():
    """A Unigram (SentencePiece-style) tokenizer like UMT5's, over a tiny vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    characters = sorted(set(UPSCALER_PROMPT.lower() + UPSCALER_PROMPT.upper() + "0123456789"))
    words = sorted({"▁" + word for word in UPSCALER_PROMPT.split()})
    pieces = [(token, 0.0) for token in specials]
    pieces += [("▁", -2.0)] + [(char, -3.0) for char in characters if not char.isspace()]
    pieces += [(word, -1.0) for word in words]
    model = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_SEQUENCE_LENGTH,
    )
    return tokenizer, len(pieces)


def build_pipeline(seed: int = 0):
    """The tiny ``ChronoEditPipeline`` (random weights, fp32)."""
    from diffusers import (
        AutoencoderKLWan,
        ChronoEditPipeline,
        ChronoEditTransformer3DModel,
        UniPCMultistepScheduler,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    tokenizer, vocab_size = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size,
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    torch.manual_seed(seed + 1)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=IMAGE_DIM,
            intermediate_size=32,
            num_hidden_layers=2,  # the pipeline reads the penultimate hidden state
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=IMAGE_DIM,
        )
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    torch.manual_seed(seed + 3)
    transformer = ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=36,  # 16 noisy latents + 4 mask + 16 condition latents
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=IMAGE_DIM,
        added_kv_proj_dim=HEADS * HEAD_DIM,
        rope_max_seq_len=1024,
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=FLOW_SHIFT,
        num_train_timesteps=1000,
    )
    return ChronoEditPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        image_processor=image_processor,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
    )


def save_random_lora(transformer, path: Path, seed: int, std: float = 0.5) -> None:
    """A random rank-4 LoRA over NVIDIA's target modules, in diffusers' key format.

    Both factors are non-zero (peft initialises B to zero), so the LoRA visibly changes the
    output and ``lora_scale`` 0 and 1 differ.
    """
    from diffusers import ChronoEditPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    adapter = f"tiny-{path.stem}"
    transformer.add_adapter(
        LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGETS),
        adapter_name=adapter,
    )
    generator = torch.Generator().manual_seed(seed)
    state = get_peft_model_state_dict(transformer, adapter_name=adapter)
    state = {
        key: torch.randn(value.shape, generator=generator) * std for key, value in state.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    ChronoEditPipeline.save_lora_weights(
        path.parent, transformer_lora_layers=state, weight_name=path.name
    )
    transformer.delete_adapters(adapter)


def build_safety_checker(directory: Path, flag_everything: bool = False, seed: int = 0) -> Path:
    """A tiny random ``StableDiffusionSafetyChecker`` + ``CLIPImageProcessor`` in ``directory``.

    The real checker flags an image when its CLIP embedding's cosine similarity to a concept
    embedding exceeds that concept's threshold. Cosines lie in [-1, 1], so thresholds of 2
    flag nothing and of -2 flag everything: the real code path runs either way.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed + 4)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 64,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    threshold = -2.0 if flag_everything else 2.0
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 5)
        checker.concept_embeds.copy_(torch.randn(checker.concept_embeds.shape, generator=generator))
        checker.special_care_embeds.copy_(
            torch.randn(checker.special_care_embeds.shape, generator=generator)
        )
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    directory.mkdir(parents=True, exist_ok=True)
    checker.save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(directory)
    return directory


def build_tiny_model(
    directory: Path,
    seed: int = 0,
    with_safety_checker: bool = False,
    flag_everything: bool = False,
) -> Path:
    """Write the tiny pipeline, its LoRAs and optionally a safety checker into ``directory``."""
    directory = Path(directory)
    pipe = build_pipeline(seed)
    pipe.save_pretrained(directory)
    save_random_lora(pipe.transformer, directory / UPSCALER_LORA_FILE, seed + 10)
    save_random_lora(pipe.transformer, directory / DISTILL_LORA_FILE, seed + 11, std=0.2)
    if with_safety_checker:
        build_safety_checker(directory / SAFETY_DIR, flag_everything, seed)
    (directory / "TINY_MODEL.json").write_text(
        json.dumps({"seed": seed, "note": "random weights for tests; not a usable upscaler"}) + "\n"
    )
    return directory


def run(args: argparse.Namespace) -> int:
    directory = build_tiny_model(
        args.directory, args.seed, args.with_safety_checker, args.flag_everything
    )
    print(f"tiny ChronoEdit model written to {directory}")
    return 0
