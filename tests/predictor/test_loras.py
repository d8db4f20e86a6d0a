"""Request LoRAs on the chronoedit engine, in process, on the tiny model (docs/loras.md).

The LoRAs are random (both factors non-zero) and written by peft and diffusers themselves, then
converted to the other key formats (``lora_files`` in conftest.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor import metrics
from predictor.api.errors import parse_request
from predictor.engines.base import EngineJob, LoraRequest
from predictor.engines.chronoedit.engine import ChronoEditEngine
from predictor.engines.options import LoraSettings
from predictor.errors import InputError, ValidationFailed
from predictor.loras import prepare as prepare_module
from predictor.loras import sources as sources_module
from predictor.loras.formats import parse_lora
from predictor.loras.prepare import check_and_convert
from predictor.loras.slots import AdapterStack
from predictor.loras.sources import LoraLoader
from tests.conftest import photo_crop

torch.set_num_threads(2)
AREA = 32 * 32  # 32×32 outputs: one pass


@pytest.fixture(scope="module")
def settings(lora_files: dict[str, Path], tmp_path_factory) -> LoraSettings:
    return LoraSettings(
        lora_dir=str(lora_files["dir"]),
        catalog=str(lora_files["catalog"]),
        cache_dir=str(tmp_path_factory.mktemp("lora-cache")),
        max_rank=8,
    )


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, settings: LoraSettings) -> ChronoEditEngine:
    return ChronoEditEngine(tiny_model_dir, max_pass_area=AREA, loras=settings)


SOURCE = photo_crop(16, 16)


def render(engine: ChronoEditEngine, *loras: tuple[str, float], **fields) -> np.ndarray:
    job = EngineJob(
        width=32,
        height=32,
        **{"seed": 5, "num_inference_steps": 2, **fields},
        loras=tuple(LoraRequest(path, scale) for path, scale in loras),
    )
    return np.asarray(engine.upscale(SOURCE, job), dtype=np.int16)


def refused(engine: ChronoEditEngine, *loras: tuple[str, float]) -> InputError:
    with pytest.raises(InputError) as caught:
        render(engine, *loras)
    return caught.value


@pytest.fixture(scope="module")
def baseline(engine: ChronoEditEngine) -> np.ndarray:
    """The output with no extra LoRA, before any LoRA was loaded."""
    return render(engine)


# --- what a LoRA does -------------------------------------------------------------------------


def test_each_lora_changes_the_output_and_two_differ(engine, baseline) -> None:
    a = render(engine, ("a.safetensors", 1.0))
    b = render(engine, ("b.safetensors", 1.0))
    c = render(engine, ("nested/c.safetensors", 1.0))  # FFN only, rank 2
    for output in (a, b, c):
        assert np.abs(output - baseline).max() > 8
    assert np.abs(a - b).max() > 8
    assert np.abs(a - render(engine, ("a.safetensors", 0.5))).max() > 2  # the scale counts


def test_order_of_loras_does_not_matter(engine) -> None:
    forward = render(engine, ("a.safetensors", 1.0), ("b.safetensors", 0.5), ("ffn", 2.0))
    backward = render(engine, ("ffn", 2.0), ("b.safetensors", 0.5), ("a.safetensors", 1.0))
    shuffled = render(engine, ("b.safetensors", 0.5), ("ffn", 2.0), ("a.safetensors", 1.0))
    assert np.array_equal(forward, backward) and np.array_equal(forward, shuffled)


def test_scale_zero_is_exactly_no_lora(engine, baseline) -> None:
    assert np.array_equal(render(engine, ("a.safetensors", 0.0)), baseline)
    assert np.array_equal(render(engine, ("a.safetensors", 0.0), ("b.safetensors", 0.0)), baseline)
    # and a zero-scale LoRA next to a real one changes nothing either
    b = render(engine, ("b.safetensors", 1.0))
    assert np.array_equal(render(engine, ("b.safetensors", 1.0), ("a.safetensors", 0.0)), b)


def test_isolation_any_sequence_then_none_equals_a_fresh_process(
    tiny_model_dir: Path, engine, baseline
) -> None:
    a = render(engine, ("a.safetensors", 1.0))
    render(engine, ("b.safetensors", 1.5), ("nested/c.safetensors", 1.0))
    refused(engine, ("a.safetensors", 1.0), ("rank16.safetensors", 1.0))  # a failed load
    assert np.array_equal(render(engine, ("a.safetensors", 1.0)), a)  # A twice: equal
    render(engine, ("b.safetensors", 1.0))
    after = render(engine)
    assert np.array_equal(after, baseline)
    # a fresh process with no slots at all: the default request runs no adapter math either way
    fresh = ChronoEditEngine(tiny_model_dir, max_pass_area=AREA, loras=LoraSettings(slots=0))
    assert fresh.supports_loras is False and fresh.metadata()["supports_loras"] is False
    assert np.array_equal(render(fresh), after)
    with pytest.raises(InputError, match="--lora-slots 0"):
        render(fresh, ("a.safetensors", 1.0))
    fresh.close()


def test_a_file_and_its_twin_in_another_key_format_give_identical_outputs(engine) -> None:
    outputs = {
        name: render(engine, (f"{name}.safetensors", 1.0))
        for name in ("a", "a_wan", "a_kohya", "a_peft")
    }
    for name, output in outputs.items():
        assert np.array_equal(output, outputs["a"]), name


def test_catalog_names_directories_and_absolute_paths(engine, lora_files) -> None:
    a = render(engine, ("a.safetensors", 1.0))
    assert np.array_equal(render(engine, ("paint", 1.0)), a)  # catalog → a file in --lora-dir
    # the catalog may point outside --lora-dir (the deployment wrote it): same bytes as a
    assert np.array_equal(render(engine, ("brush", 1.0)), a)
    assert np.array_equal(render(engine, (str(lora_files["a"]), 1.0)), a)  # absolute, inside
    b = render(engine, ("b.safetensors", 1.0))
    assert np.array_equal(render(engine, ("one", 1.0)), b)  # a directory with one file
    assert engine.loras_catalog == ["brush", "ffn", "paint"]
    meta = engine.metadata()
    assert meta["supports_loras"] is True
    assert meta["loras"]["slots"] == 3 and meta["loras"]["max_rank"] == 8
    assert meta["loras"]["catalog"] == ["brush", "ffn", "paint"]
    assert "secret" not in str(meta)  # names only: no URIs or paths of the catalog


# --- refusals: a 400 at the entry's loc, and the pipeline untouched -------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("weights.bin", "pickle checkpoint"),
        ("disguised.safetensors", "pickle/torch.save checkpoint"),
        ("keyless.safetensors", "No key of LoRA"),
        ("missing.safetensors", "does not exist"),
        ("../outside/secret.safetensors", "outside the LoRA directory"),
        ("link.safetensors", "outside the LoRA directory"),
        ("nested/../../outside/secret.safetensors", "outside the LoRA directory"),
        ("rank16.safetensors", "rank 16"),
        ("outside_targets.safetensors", "outside the request-LoRA slots"),
        ("s3://bucket/lora.safetensors", "scheme 's3' is not supported"),
        ("https://example.invalid/lora.safetensors", "--allow-lora-urls"),
        ("hf://owner/repo/weights.bin", "hf://owner/repo"),
    ],
)
def test_bad_loras_are_400s_that_say_why(engine, path: str, message: str) -> None:
    error = refused(engine, ("b.safetensors", 1.0), (path, 1.0))
    assert error.status_code == 400 and message in error.msg, error.msg
    assert error.loc == ["body", "loras", 1, "path"]
    body = error.body()
    assert body["detail"][0]["loc"] == ["body", "loras", 1, "path"]
    assert body["error_type"] == error.error_type


def test_the_error_messages_name_the_problem(engine, lora_files) -> None:
    rank = refused(engine, ("rank16.safetensors", 1.0))
    assert "--lora-max-rank" in rank.msg and "slot rank 8" in rank.msg
    outside = refused(engine, ("outside_targets.safetensors", 1.0))
    assert "proj_out" in outside.msg and "condition_embedder.time_proj" in outside.msg
    assert "add_k_proj/add_v_proj" in outside.msg
    keyless = refused(engine, ("keyless.safetensors", 1.0))
    assert "'model.weight'" in keyless.msg and "diffusion_model.blocks.N" in keyless.msg
    absolute = refused(engine, (str(lora_files["secret"]), 1.0))  # absolute, outside the dir
    assert "outside the LoRA directory" in absolute.msg
    link = refused(engine, ("link.safetensors", 1.0))
    assert str(lora_files["outside_dir"]) not in link.msg  # where a link points stays private
    not_catalog = LoraLoader(LoraSettings(catalog=str(lora_files["catalog"])))
    with pytest.raises(InputError, match="not in this deployment's LoRA catalog") as caught:
        not_catalog.resolve("a.safetensors", 0)
    assert "paint" in caught.value.msg  # it lists the names a request may use


def test_a_refused_request_leaves_the_slots_as_they_were(engine) -> None:
    a_and_b = render(engine, ("a.safetensors", 1.0), ("b.safetensors", 1.0))
    stacked = engine.adapters.parts
    assert len(stacked) == 2
    refused(engine, ("a.safetensors", 1.0), ("keyless.safetensors", 1.0))
    refused(engine, ("outside_targets.safetensors", 1.0))
    assert engine.adapters.parts == stacked
    assert np.array_equal(render(engine, ("b.safetensors", 1.0), ("a.safetensors", 1.0)), a_and_b)


def test_four_loras_are_a_422_from_the_schema() -> None:
    four = [{"path": f"l{i}", "scale": 1} for i in range(4)]
    with pytest.raises(ValidationFailed) as caught:
        parse_request({"image_url": "data:,", "loras": four})
    assert caught.value.status_code == 422
    assert caught.value.errors[0]["loc"] == ["body", "loras"]
    with pytest.raises(ValidationFailed):
        parse_request({"image_url": "data:,", "loras": [{"path": "x", "scale": 4.5}]})


def test_fewer_slots_than_loras_is_a_400(lora_files) -> None:
    loader = LoraLoader(LoraSettings(lora_dir=str(lora_files["dir"]), slots=1))
    requests = [LoraRequest("a.safetensors"), LoraRequest("b.safetensors")]
    with pytest.raises(InputError, match="at most 1 extra LoRAs") as caught:
        loader.prepare(requests)
    assert caught.value.loc == ["body", "loras"]


# --- sources: the Hub, URLs -----------------------------------------------------------------


def test_hf_uris_go_through_the_hub_download(engine, lora_files, monkeypatch) -> None:
    calls = []

    def fake_download(repo_id, filename, revision, max_bytes):
        calls.append((repo_id, filename, revision, max_bytes))
        if filename == "missing.safetensors":
            raise FileNotFoundError("404 Client Error: Entry Not Found")
        return str(lora_files["a_wan"])

    monkeypatch.setattr(sources_module, "hf_download", fake_download)
    a = render(engine, ("a.safetensors", 1.0))
    assert np.array_equal(render(engine, ("hf://acme/paint@v1/sub/a.safetensors", 1.0)), a)
    assert calls == [("acme/paint", "sub/a.safetensors", "v1", engine.lora_settings.max_bytes)]
    render(engine, ("hf://acme/paint@v1/sub/a.safetensors", 1.0))
    assert len(calls) == 1  # resolved once per process
    error = refused(engine, ("hf://acme/paint/missing.safetensors", 1.0))
    assert error.error_type == "file_download_error" and "Entry Not Found" in error.msg
    assert error.loc == ["body", "loras", 0, "path"]


def test_hub_files_over_the_size_limit_are_not_downloaded(engine, monkeypatch) -> None:
    import huggingface_hub

    downloads = []

    def fake_hub(repo_id, filename, *, revision=None, dry_run=False):
        if dry_run:
            return type("Info", (), {"will_download": True, "file_size": 5 * 2**30})()
        downloads.append(filename)
        return "/nowhere"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
    error = refused(engine, ("hf://acme/huge/huge.safetensors", 1.0))
    assert error.status_code == 413 and "--max-lora-mb" in error.msg and not downloads


def test_http_loras_need_the_policy_and_keep_the_address_guards(
    engine, lora_files, image_host, tmp_path
) -> None:
    url = image_host.add("/loras/a.safetensors", lora_files["a_kohya"].read_bytes(), "x/y")
    layout = engine.adapters.layout
    base = {"cache_dir": str(tmp_path / "cache"), "max_rank": 8}
    closed = LoraLoader(LoraSettings(**base, allow_private_urls=True), layout)
    with pytest.raises(InputError, match="--allow-lora-urls") as caught:
        closed.load(url, 0)
    assert caught.value.error_type == "url_not_allowed"
    assert caught.value.loc == ["body", "loras", 0, "path"]
    public_only = LoraLoader(LoraSettings(**base, allow_urls=True), layout)
    with pytest.raises(InputError, match="loopback") as caught:
        public_only.load(url, 2)
    assert caught.value.loc == ["body", "loras", 2, "path"]  # the fetcher's guard, our loc
    allowed = LoraLoader(LoraSettings(**base, allow_urls=True, allow_private_urls=True), layout)
    lora = allowed.load(url, 0)
    assert lora.format == "kohya" and lora.rank == 4 and lora.label == url
    hits = metrics.LORA_CACHE_HITS._value.get()
    assert (tmp_path / "cache" / f"{lora.sha256}.safetensors").is_file()  # on disk by content
    assert allowed.load(url, 0) is lora and metrics.LORA_CACHE_HITS._value.get() == hits + 1
    signed = LoraLoader(LoraSettings(**base, allow_urls=True, allow_private_urls=True), layout)
    with pytest.raises(InputError, match="HTTP 404") as caught:
        signed.load(image_host.url + "/none.safetensors?X-Amz-Signature=secret", 0)
    assert "secret" not in caught.value.msg  # no query string in messages or logs
    assert signed.load(url + "?X-Amz-Signature=secret", 1).label == url
    small = LoraLoader(
        LoraSettings(**{**base, "max_bytes": 1000}, allow_urls=True, allow_private_urls=True),
        layout,
    )
    with pytest.raises(InputError, match="--max-lora-mb") as caught:
        small.load(url, 0)
    assert caught.value.status_code == 413
    missing = image_host.url + "/loras/none.safetensors"
    with pytest.raises(InputError, match="HTTP 404") as caught:
        allowed.load(missing, 1)
    assert caught.value.error_type == "file_download_error"
    pickled = image_host.add("/loras/p", lora_files["disguised"].read_bytes(), "x/y")
    with pytest.raises(InputError, match="pickle"):
        allowed.load(pickled, 0)


def test_a_download_stops_when_the_job_is_cancelled(engine, lora_files, image_host, tmp_path):
    from predictor.workers import JobCancelled

    url = image_host.url + "/slow"  # 40 bytes over 10 s
    loader = LoraLoader(
        LoraSettings(cache_dir=str(tmp_path), allow_urls=True, allow_private_urls=True),
        engine.adapters.layout,
    )
    seen = []

    def progress(done: int, total: int, unit: str) -> None:
        seen.append((done, total, unit))
        if len(seen) > 1:
            raise JobCancelled()

    sources_module.HEARTBEAT_S, saved = 0.0, sources_module.HEARTBEAT_S
    try:
        with pytest.raises(JobCancelled):
            loader.prepare([LoraRequest(url)], progress)
    finally:
        sources_module.HEARTBEAT_S = saved
    assert seen[0] == (0, 1, "lora")
    assert not list(tmp_path.glob("*.part"))  # the partial download is gone


# --- cache, metrics ------------------------------------------------------------------------


def test_repeats_are_host_cache_hits(engine, lora_files, tmp_path) -> None:
    copy = tmp_path / "copy.safetensors"
    shutil.copy(lora_files["b"], copy)
    loader = LoraLoader(LoraSettings(lora_dir=str(tmp_path), max_rank=8), engine.adapters.layout)
    hits, misses = metrics.LORA_CACHE_HITS._value.get(), metrics.LORA_CACHE_MISSES._value.get()
    loads = metrics.LORA_LOAD_SECONDS._sum.get()
    first = loader.load("copy.safetensors", 0)
    assert metrics.LORA_CACHE_MISSES._value.get() == misses + 1
    assert loader.load("copy.safetensors", 0) is first
    assert metrics.LORA_CACHE_HITS._value.get() == hits + 1
    assert metrics.LORA_LOAD_SECONDS._sum.get() > loads
    # a changed file is read again; the content hash decides what is the same LoRA
    shutil.copy(lora_files["a"], copy)
    assert loader.load("copy.safetensors", 0).sha256 != first.sha256


def test_host_cache_is_a_bounded_lru() -> None:
    def item(name: str, nbytes: int) -> prepare_module.PreparedLora:
        return prepare_module.PreparedLora(name, name, "diffusers", {}, 1, nbytes)

    cache = prepare_module.HostCache(100)
    cache.put(item("a", 40))
    cache.put(item("b", 40))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put(item("c", 40))  # evicts b, the least recently used
    assert "b" not in cache and "a" in cache and "c" in cache and cache.used == 80
    cache.put(item("huge", 101))  # larger than the cache: not kept
    assert "huge" not in cache and len(cache) == 2


# --- the converter against diffusers' own loader ------------------------------------------------


def _transformer_output(transformer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(1, 36, 2, 4, 4, generator=generator),
            timestep=torch.tensor([500]),
            encoder_hidden_states=torch.randn(1, 512, 16, generator=generator),
            encoder_hidden_states_image=torch.randn(1, 17, 16, generator=generator),
            return_dict=False,
        )[0]


@pytest.mark.parametrize("name", ["a", "a_wan", "a_kohya"])
def test_slots_apply_a_lora_as_diffusers_own_loader_does(tiny_model_dir, lora_files, name):
    """diffusers' loader (with its own key conversion) and a slot give the same transformer."""
    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel

    reference = ChronoEditTransformer3DModel.from_pretrained(tiny_model_dir / "transformer")
    base = _transformer_output(reference)
    state, metadata = ChronoEditPipeline.lora_state_dict(
        str(lora_files[name]), return_lora_metadata=True
    )
    reference.load_lora_adapter(state, prefix="transformer", adapter_name="x", metadata=metadata)
    expected = _transformer_output(reference)

    ours = ChronoEditTransformer3DModel.from_pretrained(tiny_model_dir / "transformer")
    stack = AdapterStack.install(ours, None, 1, 8)
    loader = LoraLoader(LoraSettings(lora_dir=str(lora_files["dir"]), max_rank=8), stack.layout)
    stack.apply(1.0, [(loader.load(f"{name}.safetensors", 0), 1.0)])
    got = _transformer_output(ours)
    assert (expected - base).abs().max() > 0.05  # the LoRA does something
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    stack.apply(1.0, [])
    assert torch.equal(_transformer_output(ours), base)  # rank 0: exactly the base model


def test_parsed_keys_are_checked_against_the_slot_layout(engine, lora_files) -> None:
    from safetensors.torch import load_file

    parsed = parse_lora(load_file(lora_files["a_wan"]))
    converted = check_and_convert(parsed, engine.adapters.layout, "a", ("body", "loras", 0, "path"))
    assert len(converted) == 2 * 12  # 2 blocks × 12 slot layers
    down, up = converted["blocks.1.attn2.add_k_proj"]
    assert down.shape == (4, 24) and up.shape == (24, 4)
    loc = ("body", "loras", 0, "path")
    bigger = parse_lora({"blocks.7.attn1.to_q.lora_A.weight": down.clone(),
                         "blocks.7.attn1.to_q.lora_B.weight": up.clone(),
                         **load_file(lora_files["a"])})  # fmt: skip
    with pytest.raises(InputError, match="more blocks"):
        check_and_convert(bigger, engine.adapters.layout, "big", loc)
    narrow = parse_lora({"blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 16),
                         "blocks.0.attn1.to_q.lora_B.weight": torch.ones(16, 4)})  # fmt: skip
    with pytest.raises(InputError, match="another model"):
        check_and_convert(narrow, engine.adapters.layout, "narrow", loc)
    broken = parse_lora({"blocks.0.attn1.to_q.lora_A.weight": torch.full((4, 24), float("nan")),
                         "blocks.0.attn1.to_q.lora_B.weight": torch.ones(24, 4)})  # fmt: skip
    with pytest.raises(InputError, match="NaN"):
        check_and_convert(broken, engine.adapters.layout, "broken", loc)


# --- compile safety -----------------------------------------------------------------------------


def test_compiled_engine_swaps_loras_without_recompiling(tiny_model_dir, settings, engine) -> None:
    """``--compile``: warm-up compiles the stack's graph variants (rank 0 and each rank
    bucket); after it, a sequence of different LoRA sets and ``lora_scale`` values (and none,
    and a refused one) adds no graph and never recompiles; the compiled graph sees the
    stacked weights."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    compiled = ChronoEditEngine(tiny_model_dir, max_pass_area=AREA, compile=True, loras=settings)
    assert compiled.warmup_bucket == (32, 32)
    assert compiled.metadata()["graph_variants"] == [0, 8, 16, 28]  # upscaler 4 + 3 × rank 8
    graphs = counters["stats"]["unique_graphs"]
    frames = counters["frames"]["total"]
    sequence = [  # (loras, lora_scale)
        ([("a.safetensors", 1.0)], 1.0),
        ([("b.safetensors", 0.5), ("nested/c.safetensors", 2.0)], 1.7),
        ([], 1.0),
        ([("a_kohya.safetensors", 1.0), ("b.safetensors", 1.0), ("paint", 0.25)], 0.0),
        ([("b.safetensors", 3.0)], 1.0),
        ([], 1.0),
        ([], 1.7),
    ]
    outputs, ranks = [], []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for loras, scale in sequence:
            outputs.append(render(compiled, *loras, lora_scale=scale))
            ranks.append(compiled.adapters.rank)
        refused(compiled, ("rank16.safetensors", 1.0))
        outputs.append(render(compiled, ("a.safetensors", 1.0)))
    assert counters["stats"]["unique_graphs"] == graphs  # zero new graphs
    assert counters["frames"]["total"] == frames  # nothing was compiled again
    assert ranks == [8, 16, 0, 28, 8, 0, 8]  # every variant was used
    for (loras, scale), output in zip(sequence[:4], outputs[:4], strict=True):
        eager = render(engine, *loras, lora_scale=scale)
        assert np.abs(output - eager).max() <= 2  # the compiled graph reads the stacked weights
    assert np.array_equal(outputs[2], outputs[5]) and np.array_equal(outputs[0], outputs[7])
    compiled.close()
