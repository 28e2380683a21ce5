"""The `vision-attn` command: make-synthetic, export, evaluate, caption, vqa; and the exported folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from vision_attn import Pipeline, VisionAttnModel
from vision_attn.cli import main
from vision_attn.config import DecoderConfig, EncoderConfig
from vision_attn.data.datamodule import VisionAttnDataModule
from vision_attn.data.images import load_image
from vision_attn.data.layout import read_split
from vision_attn.tasks import GenerationConfig, RankedAnswer, Ranking, score_continuations, vqa_prompt
from vision_attn.training import VisionAttnModule

# Probabilities of a batch and of its members alone differ by float rounding (the matmuls' reduction order changes
# with the batch shape, and differs between CPUs): texts and rankings must be equal, probabilities equal to this
# relative tolerance (a log-probability error of 1e-4).
PROB_REL = 1e-4


def assert_same_ranked(got: list[RankedAnswer], want: list[RankedAnswer]) -> None:
    assert [a.answer for a in got] == [a.answer for a in want]
    assert [a.probability for a in got] == pytest.approx([a.probability for a in want], rel=PROB_REL, abs=0)


def assert_same_rankings(got: list[Ranking], want: list[Ranking]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert_same_ranked(g.answers, w.answers)


@pytest.fixture(scope="module")
def checkpoint(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 3 steps on the tiny synthetic set; returns last.ckpt."""
    out = tmp_path_factory.mktemp("run")
    L.seed_everything(0)
    dm = VisionAttnDataModule(root=str(synthetic_root), image_size=32, max_text_len=64, batch_size=8, num_workers=0)
    module = VisionAttnModule(  # the model is built in fit, once the DataModule has its tokenizer
        encoder=EncoderConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2),
        decoder=DecoderConfig(dim=32, depth=1, num_heads=2, max_len=64),
    )
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=out, save_last=True)
    trainer = L.Trainer(
        max_steps=3,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ckpt_cb],
        accelerator="cpu",
        default_root_dir=str(out),  # where the DataModule writes its tokenizer
    )
    trainer.fit(module, dm)
    return out / "last.ckpt"


@pytest.fixture(scope="module")
def model_dir(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    assert main(["export", str(checkpoint), str(out)]) == 0
    return out


def test_make_synthetic_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(
            [
                "make-synthetic",
                "--out",
                str(tmp_path),
                "--train",
                "3",
                "--val",
                "2",
                "--image-size",
                "64",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    counts = json.loads(capsys.readouterr().out)
    assert counts["train_images"] == 3 and counts["val_images"] == 2
    assert len(read_split(tmp_path, "val")) == 2


def test_make_synthetic_variant_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--variant picks the data and, without --image-size, its image size; a VQA-only variant has no captions."""
    args = ["make-synthetic", "--out", str(tmp_path), "--variant", "shapes64", "--train", "2", "--val", "1"]
    assert main([*args, "--workers", "1"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["train_captions"] == 0 and counts["train_questions"] == 8
    (record,) = read_split(tmp_path, "val")
    with Image.open(record.path) as im:
        assert im.size == (64, 64)
    with pytest.raises(SystemExit):
        main(["make-synthetic", "--out", str(tmp_path), "--variant", "nope"])
    assert "invalid choice: 'nope' (choose from 'demo', 'shapes64', 'relations', 'counting')" in capsys.readouterr().err


def test_export_folder_is_self_contained(model_dir: Path, checkpoint: Path) -> None:
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    model = VisionAttnModel.from_pretrained(model_dir)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[f"model.{k}"]), k


def test_export_rejects_missing_and_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not written by vision-attn"):
        main(["export", str(foreign), str(tmp_path / "out")])


def test_pipeline_batch_equals_single(model_dir: Path, synthetic_root: Path) -> None:
    pipe = Pipeline.from_pretrained(model_dir, device="cpu", batch_size=3)
    paths = sorted((synthetic_root / "val2014").glob("*.jpg"))[:5]
    batched = pipe.caption([str(p) for p in paths])
    assert batched == [pipe.caption(str(p)) for p in paths]
    qs = ["what color is the circle?", "how many objects are there?", "is there a red square?", "where is it?", "x"]
    answers = pipe.answer([str(p) for p in paths], qs)
    assert answers == [pipe.answer(str(p), q) for p, q in zip(paths, qs, strict=True)]
    # every input kind gives the same caption
    pil = Image.open(paths[0])
    assert pipe.caption(pil) == pipe.caption(paths[0].read_bytes()) == batched[0]


def test_pipeline_rejects_bad_input(model_dir: Path, tmp_path: Path) -> None:
    pipe = Pipeline.from_pretrained(model_dir, device="cpu")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    from vision_attn.data.errors import ImageLoadError

    with pytest.raises(ImageLoadError, match="bad.jpg"):
        pipe.caption(str(bad))
    with pytest.raises(ValueError, match="non-empty"):
        pipe.answer(Image.new("RGB", (8, 8)), "  ")
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        pipe.caption(torch.zeros(1, 8, 8))


def test_caption_command_skips_unreadable_files(
    model_dir: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, p in enumerate(sorted((synthetic_root / "val2014").glob("*.jpg"))[:2]):
        (folder / "sub" / f"{i}.jpg").write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "notes.txt").write_text("not an image, not matched by extension")
    code = main(["caption", "--model", str(model_dir), "--json", "--device", "cpu", str(folder)])
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines()]
    assert code == 1  # one file failed
    assert sorted(Path(x["image"]).name for x in lines) == ["0.jpg", "1.jpg"]
    assert all(isinstance(x["caption"], str) for x in lines)
    assert "broken.jpg" in err and err.count("error:") == 1


ASSETS = Path(__file__).resolve().parents[1] / "assets"


def test_caption_command_on_assets_with_a_real_photo_and_a_corrupt_file(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """assets/ holds synthetic scenes and a real photograph: 1792x2100, grayscale, stored on its side with EXIF
    orientation 6. A truncated copy of the photo is added: one error line, the rest captioned, exit code 1."""
    photo = ASSETS / "photo_grace_hopper.jpg"
    raw = Image.open(photo)
    assert (raw.size, raw.mode, raw.getexif().get(0x0112)) == ((2100, 1792), "L", 6)
    assert load_image(photo).size == (1792, 2100)  # upright after the EXIF rotation, RGB
    folder = tmp_path / "assets"
    shutil.copytree(ASSETS, folder)
    data = photo.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    code = main(["caption", "--model", str(model_dir), "--json", "--device", "cpu", str(folder)])
    out, err = capsys.readouterr()
    captioned = {Path(x["image"]).name: x["caption"] for x in map(json.loads, out.splitlines())}
    assert code == 1
    assert set(captioned) == {p.name for p in ASSETS.glob("*.jpg")}
    pipe = Pipeline.from_pretrained(model_dir, device="cpu")
    assert captioned["photo_grace_hopper.jpg"] == pipe.caption(str(photo))
    assert "truncated.jpg" in err and err.count("error:") == 1


def test_vqa_command(model_dir: Path, synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    image = sorted((synthetic_root / "val2014").glob("*.jpg"))[0]
    q = "what color is the circle?"
    assert (
        main(["vqa", "--model", str(model_dir), "--image", str(image), "--question", q, "--json", "--device", "cpu"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["answer"] == Pipeline.from_pretrained(model_dir, device="cpu").answer(str(image), q)


def test_evaluate_command_writes_standard_files(model_dir: Path, synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model_dir),
                "--data-root",
                str(synthetic_root),
                "--split",
                "val",
                "--baseline-split",
                "train",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    caps = json.loads((out / "captions_results.json").read_text())
    answers = json.loads((out / "vqa_results.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    records = read_split(synthetic_root, "val")
    assert sorted(c["image_id"] for c in caps) == sorted(r.image_id for r in records)
    assert sorted(a["question_id"] for a in answers) == sorted(q.question_id for r in records for q in r.questions)
    for key in ("bleu4", "cider", "vqa_accuracy", "majority_baseline"):
        assert isinstance(metrics[key], float), key
    assert 0.0 <= metrics["vqa_accuracy"] <= 100.0
    per_type = metrics["per_question_type_vs_majority"]
    assert set(per_type) == {q.question_type for r in records for q in r.questions}
    assert all(0 <= v["majority_baseline"] <= 100 for v in per_type.values())


def test_evaluate_command_compiled_writes_the_same_results(
    model_dir: Path, synthetic_root: Path, tmp_path: Path, compiled_graphs: Callable[[], int]
) -> None:
    """--compile decodes every caption and answer of the split to the same text (two shapes: captions, answers)."""
    argv = ["evaluate", "--model", str(model_dir), "--data-root", str(synthetic_root), "--split", "val"]
    argv += ["--device", "cpu", "--no-meteor"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert main([*argv, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    for name in ("captions_results.json", "vqa_results.json"):
        plain = json.loads((tmp_path / "plain" / name).read_text())
        assert len(plain) >= 16 and json.loads((tmp_path / "compiled" / name).read_text()) == plain
    assert compiled_graphs() == 2  # captions and answers: two shapes


def test_evaluate_runs_under_the_pipeline_autocast_and_gives_its_texts(model_dir: Path, synthetic_root: Path) -> None:
    """`evaluate` decodes through the pipeline: on a bf16 pipeline its matmuls run in bf16 (on a GPU that is the
    default), and its captions and answers are the pipeline's own for the same images and questions (compared in
    float32, where a batch gives the texts of its members alone)."""
    from vision_attn.evaluation import evaluate_records

    records = read_split(synthetic_root, "val")[:6]
    pipe = Pipeline.from_pretrained(model_dir, device="cpu", bf16=True, batch_size=4)
    dtypes: set[torch.dtype] = set()
    hook = pipe.model.decoder.lm_head.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    evaluate_records(pipe, records[:2])
    hook.remove()
    assert dtypes == {torch.bfloat16}
    pipe = Pipeline.from_pretrained(model_dir, device="cpu", batch_size=4)
    preds = evaluate_records(pipe, records)
    assert [preds.captions[r.image_id] for r in records] == pipe.caption([str(r.path) for r in records])
    questions = [(str(r.path), q) for r in records for q in r.questions]
    assert len(questions) > 20
    answers = pipe.answer([p for p, _ in questions], [q.question for _, q in questions])
    assert [preds.answers[q.question_id] for _, q in questions] == answers


def test_evaluate_command_decodes_answers_with_their_own_beams(
    model_dir: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    """`--num-beams` decodes captions and answers, `--answer-beams` answers alone: each file holds what the pipeline
    gives under that setting (the untrained model's beam and greedy texts differ, so a swap would show)."""
    records = read_split(synthetic_root, "val")[:4]
    paths = [str(r.path) for r in records]
    questions = [(str(r.path), q) for r in records for q in r.questions]
    pipe = Pipeline.from_pretrained(model_dir, device="cpu")
    beam, greedy = GenerationConfig(num_beams=3), GenerationConfig()
    captions = {c: pipe.caption(paths, cfg) for c, cfg in (("beam", beam), ("greedy", greedy))}
    answers = {
        c: pipe.answer([p for p, _ in questions], [q.question for _, q in questions], cfg)
        for c, cfg in (("beam", beam), ("greedy", greedy))
    }
    assert captions["beam"] != captions["greedy"] and answers["beam"] != answers["greedy"]
    for flags, want in (([], "beam"), (["--answer-beams", "1"], "greedy")):
        out = tmp_path / want
        argv = ["evaluate", "--model", str(model_dir), "--data-root", str(synthetic_root), "--split", "val"]
        argv += ["--max-images", "4", "--num-beams", "3", *flags, "--out", str(out), "--device", "cpu", "--no-meteor"]
        assert main(argv) == 0
        caps = {c["image_id"]: c["caption"] for c in json.loads((out / "captions_results.json").read_text())}
        got = {a["question_id"]: a["answer"] for a in json.loads((out / "vqa_results.json").read_text())}
        assert [caps[r.image_id] for r in records] == captions["beam"]
        assert [got[q.question_id] for _, q in questions] == answers[want]


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--data-root", "d", "--model", "m", "--answer-beams", "0"],
        ["evaluate", "--data-root", "d", "--model", "m", "--num-beams", "-2"],
        ["caption", "--model", "m", "--num-beams", "three", "x.jpg"],
        ["vqa", "--model", "m", "--image", "x.jpg", "--question", "q?", "--num-beams", "0"],
    ],
)
def test_a_number_of_beams_below_one_is_refused_naming_the_option(
    argv: list[str], capsys: pytest.CaptureFixture
) -> None:
    """Refused by the parser before any model is loaded, with the option and the value in the message."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    option, value = argv[-3:-1] if argv[0] == "caption" else argv[-2:]
    err = capsys.readouterr().err
    assert f"argument {option}: expected a number of beams >= 1" in err and repr(value) in err


def test_rank_answers_is_ranked_and_sums_to_at_most_one(model_dir: Path, synthetic_root: Path) -> None:
    pipe = Pipeline.from_pretrained(model_dir, device="cpu", batch_size=2)
    paths = [str(p) for p in sorted((synthetic_root / "val2014").glob("*.jpg"))[:3]]
    qs = ["what color is the circle?", "how many objects are there?", "is there a red square?"]
    ranked = pipe.rank_answers(paths, qs, top_k=3)
    for r in ranked:
        probs = [a.probability for a in r.answers]
        assert 1 <= len(r.answers) <= 3 and len({a.answer for a in r.answers}) == len(r.answers)
        assert probs == sorted(probs, reverse=True) and all(0 < p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
        assert r.maps is None
    assert_same_rankings(ranked, [pipe.rank_answers(p, q, top_k=3) for p, q in zip(paths, qs, strict=True)])
    with pytest.raises(ValueError, match="top_k"):
        pipe.rank_answers(paths[0], qs[0], top_k=0)
    best = pipe.rank_answers(paths[0], qs[0], top_k=1)  # one ranked answer (beam search, never greedy's no-ranking)
    assert len(best.answers) == 1
    assert_same_ranked(best.answers, ranked[0].answers[:1])


def test_score_candidates_ranks_them_by_their_probability(model_dir: Path, synthetic_root: Path) -> None:
    pipe = Pipeline.from_pretrained(model_dir, device="cpu", batch_size=2)
    paths = [str(p) for p in sorted((synthetic_root / "val2014").glob("*.jpg"))[:3]]
    qs = ["what color is the circle?", "what shape is the red object?", "where is the blue square?"]
    cands = ["red", "blue", "top left", "circle"]
    ranked = pipe.score_candidates(paths, qs, cands)
    for path, q, answers in zip(paths, qs, ranked, strict=True):
        assert sorted(a.answer for a in answers) == sorted(cands)
        probs = [a.probability for a in answers]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        # each probability is the teacher-forced probability of the answer tokens and EOS
        x = pipe.preprocess(path)[None]
        answer_ids = pipe.codec.encode(answers[0].answer) + [pipe.codec.eos]
        logp = score_continuations(pipe.model, x, [vqa_prompt(pipe.codec, q)], [answer_ids])
        assert answers[0].probability == pytest.approx(float(logp.exp()), rel=1e-5)
    for got, (p, q) in zip(ranked, zip(paths, qs, strict=True), strict=True):
        assert_same_ranked(got, pipe.score_candidates(p, q, cands))
    with pytest.raises(ValueError, match="candidates"):
        pipe.score_candidates(paths[0], qs[0], ["red", ""])


def test_vqa_command_top_k(model_dir: Path, synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    image = str(sorted((synthetic_root / "val2014").glob("*.jpg"))[0])
    q = "what color is the circle?"
    assert (
        main(
            [
                "vqa",
                "--model",
                str(model_dir),
                "--image",
                image,
                "--question",
                q,
                "--top-k",
                "3",
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    want = Pipeline.from_pretrained(model_dir, device="cpu").rank_answers(image, q, top_k=3)
    assert_same_ranked([RankedAnswer(**a) for a in out["answers"]], want.answers)
    assert out["answer"] == out["answers"][0]["answer"]


def test_caption_command_batches_equal_single(
    model_dir: Path, synthetic_root: Path, capsys: pytest.CaptureFixture
) -> None:
    paths = [str(p) for p in sorted((synthetic_root / "val2014").glob("*.jpg"))[:5]]
    assert main(["caption", "--model", str(model_dir), "--batch-size", "2", "--device", "cpu", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    pipe = Pipeline.from_pretrained(model_dir, device="cpu")
    assert lines == [f"{p}\t{pipe.caption(p)}" for p in paths]


def test_caption_command_compiled_equals_uncompiled(
    model_dir: Path, synthetic_root: Path, capsys: pytest.CaptureFixture, compiled_graphs: Callable[[], int]
) -> None:
    """--compile (5 images: one batch, padded to 8 rows) gives the uncompiled captions."""
    paths = [str(p) for p in sorted((synthetic_root / "val2014").glob("*.jpg"))[5:10]]
    args = ["caption", "--model", str(model_dir), "--device", "cpu", *paths]
    assert main(args) == 0
    plain = capsys.readouterr().out.splitlines()
    assert main([*args[:-5], "--compile", *paths]) == 0
    assert capsys.readouterr().out.splitlines() == plain
    assert compiled_graphs() == 1
    # a 3-step model may end a caption at once (EOS first): the lines are path<TAB>caption, one per image
    assert [line.split("\t")[0] for line in plain] == paths and any(line.split("\t")[1] for line in plain)


def test_pipeline_bf16_autocast_is_off_on_cpu_by_default_and_works_when_asked(
    model_dir: Path, synthetic_root: Path
) -> None:
    """On a GPU the pipeline runs in bf16 autocast by default; the same code path is checked here on the CPU."""
    image = str(sorted((synthetic_root / "val2014").glob("*.jpg"))[0])
    assert Pipeline.from_pretrained(model_dir, device="cpu").bf16 is False
    pipe = Pipeline.from_pretrained(model_dir, device="cpu", bf16=True)
    dtypes: set[torch.dtype] = set()
    hook = pipe.model.decoder.lm_head.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    caption = pipe.caption(image, GenerationConfig(max_new_tokens=8))
    ranked = pipe.rank_answers(image, "what color is the circle?", top_k=2)
    hook.remove()
    assert dtypes == {torch.bfloat16}  # the matmuls really ran in bf16
    assert isinstance(caption, str)
    assert 0 < sum(a.probability for a in ranked.answers) <= 1 + 1e-6
    assert next(pipe.model.parameters()).dtype == torch.float32  # weights stay float32


def test_answer_encodes_an_image_asked_several_questions_once(
    model_dir: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [str(p) for p in sorted((synthetic_root / "val2014").glob("*.jpg"))[:2]]
    qs = ["what color is the circle?", "how many objects are there?", "is there a red square?"]
    pipe = Pipeline.from_pretrained(model_dir, device="cpu")
    cands = ["red", "2"]
    alone_plain = [pipe.answer(paths[0], q) for q in qs] + [pipe.answer(paths[1], qs[0])]
    alone_ranked = [pipe.rank_answers(paths[0], q, top_k=2) for q in qs] + [pipe.rank_answers(paths[1], qs[0], 2)]
    alone_cands = [pipe.score_candidates(paths[0], q, cands) for q in qs] + [
        pipe.score_candidates(paths[1], qs[0], cands)
    ]
    calls: list[object] = []
    preprocess = pipe.preprocess
    monkeypatch.setattr(pipe, "preprocess", lambda im: calls.append(im) or preprocess(im))
    images, questions = [paths[0]] * 3 + [paths[1]], [*qs, qs[0]]
    assert pipe.answer(images, questions) == alone_plain
    assert calls == paths  # each image once, in order of first appearance
    assert_same_rankings(pipe.rank_answers(images, questions, top_k=2), alone_ranked)
    for got, want in zip(pipe.score_candidates(images, questions, cands), alone_cands, strict=True):
        assert_same_ranked(got, want)
    maps = pipe.answer_maps(images, questions)
    assert [m.text for m in maps] == alone_plain


def _break_config_json(d: Path) -> str:
    (d / "config.json").write_text("{not json")
    return "config.json: not a readable JSON file"


def _drop_config_key(d: Path) -> str:
    cfg = json.loads((d / "config.json").read_text())
    del cfg["decoder"]
    (d / "config.json").write_text(json.dumps(cfg))
    return "config.json: missing key 'decoder'"


def _truncate_weights(d: Path) -> str:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return "model.safetensors: not the weights of this model"


def _break_tokenizer(d: Path) -> str:
    (d / "tokenizer.json").write_text('{"model": 3}')
    return "tokenizer.json: not a valid tokenizer.json"


def _remove_folder(d: Path) -> str:
    shutil.rmtree(d)
    return "no such model folder"


@pytest.mark.parametrize(
    "damage", [_break_config_json, _drop_config_key, _truncate_weights, _break_tokenizer, _remove_folder]
)
@pytest.mark.parametrize("command", ["caption", "vqa"])
def test_a_broken_model_folder_is_one_error_line(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damage: Callable[[Path], str], command: str
) -> None:
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    expected = damage(broken)
    image = str(Path(__file__).resolve().parents[1] / "assets" / "scene_1.jpg")
    args = ["caption", image] if command == "caption" else ["vqa", "--image", image, "--question", "what color?"]
    assert main([*args, "--model", str(broken), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and str(broken) in err, err
    assert len(err.splitlines()) == 1, err  # no traceback


def test_vqa_with_an_unreadable_image_is_one_error_line(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["vqa", "--model", str(model_dir), "--image", str(bad), "--question", "what?", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: not a recognised image file", err


def _huge_png(path: Path, side: int) -> Path:
    """A valid side x side black RGB PNG of a few hundred KB, written row by row (never held in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp, row = zlib.compressobj(9), b"\x00" * (1 + 3 * side)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _peak_rss_mb(args: list[str]) -> tuple[int, float, str]:
    """Run `vision-attn ARGS` in a subprocess: its exit code, peak resident memory (MB) and stderr."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "vision_attn.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    stderr = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, stderr


def test_caption_memory_is_bounded_by_the_batch_not_by_the_files(model_dir: Path, tmp_path: Path) -> None:
    """A 13000 x 13000 PNG (169 MP, 0.5 MB on disk) is refused before it is decoded, and 24 MP JPEGs are decoded
    reduced: captioning them costs little more memory than captioning one small image. Before, the PNG alone took
    the command's peak from 0.9 to 3.1 GB."""
    small = str(Path(__file__).resolve().parents[1] / "assets" / "scene_2.jpg")
    huge = _huge_png(tmp_path / "huge.png", 13000)
    photos = []
    for i in range(3):
        photos.append(tmp_path / f"photo{i}.jpg")
        Image.new("RGB", (6000, 4000), (40 * i, 90, 160)).save(photos[-1], quality=90)
    base = ["caption", "--model", str(model_dir), "--device", "cpu", "--batch-size", "4"]
    code, baseline, _ = _peak_rss_mb([*base, small])
    assert code == 0
    code, peak, err = _peak_rss_mb([*base, small, str(huge), *map(str, photos), "--attention-dir", str(tmp_path)])
    assert code == 1  # one file failed, the rest were captioned
    assert err.strip() == f"error: {huge}: image is 13000x13000 = 169000000 pixels, over the limit of 50000000"
    assert peak - baseline < 150, f"peak {peak:.0f} MB against {baseline:.0f} MB for one small image"
    assert len(list(tmp_path.glob("photo*.png"))) == 3  # their attention pictures were drawn
