"""`vision-attn evaluate --results`: scoring result files from any system against hand-computed metric values."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from vision_attn.cli import main
from vision_attn.metrics import java_available


def _write_split(root: Path) -> None:
    """Two images, three questions, in the COCO 2014 + VQAv2 layout (the images themselves are not needed)."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    captions = [{"id": 10, "image_id": 1, "caption": "A red circle on the left."}]
    captions += [{"id": 11, "image_id": 2, "caption": "Two blue squares"}]
    (root / "annotations/captions_val2014.json").write_text(json.dumps({"images": images, "annotations": captions}))
    questions = [
        {"question_id": 100, "image_id": 1, "question": "what color is the circle?"},
        {"question_id": 101, "image_id": 2, "question": "how many squares are there?"},
        {"question_id": 102, "image_id": 2, "question": "is there a circle?"},
    ]
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions}))

    def ann(qid: int, image_id: int, answers: list[str], qtype: str, atype: str) -> dict:
        return {
            "question_id": qid,
            "image_id": image_id,
            "question_type": qtype,
            "answer_type": atype,
            "multiple_choice_answer": max(set(answers), key=answers.count),
            "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
        }

    anns = [
        ann(100, 1, ["red"] * 10, "what color is the", "other"),
        ann(101, 2, ["2"] * 2 + ["3"] * 8, "how many", "number"),
        ann(102, 2, ["yes"] * 10, "is there a", "yes/no"),
    ]
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": anns}))


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _write_split(root)
    return root


def _results(tmp_path: Path, captions: list[dict] | None = None, answers: list[dict] | None = None) -> list[str]:
    paths = []
    for name, entries in (("captions_results.json", captions), ("vqa_results.json", answers)):
        if entries is not None:
            (tmp_path / name).write_text(json.dumps(entries))
            paths.append(str(tmp_path / name))
    return paths


def test_evaluate_results_files_against_hand_computed_values(split_root: Path, tmp_path: Path) -> None:
    files = _results(
        tmp_path,
        captions=[{"image_id": 1, "caption": "a red circle"}, {"image_id": 2, "caption": "Two blue squares."}],
        answers=[
            {"question_id": 100, "answer": "red"},  # 10/10 annotators: 100
            {"question_id": 101, "answer": "two"},  # normalised to "2"; 2/10: (2 * 1/3 + 8 * 2/3) / 10 = 60
            {"question_id": 102, "answer": "no"},  # 0
        ],
    )
    out = tmp_path / "eval"
    assert main(["evaluate", "--data-root", str(split_root), "--results", *files, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["vqa_accuracy"] == pytest.approx((100 + 60 + 0) / 3, abs=0.01)
    assert m["per_answer_type"] == pytest.approx({"other": 100.0, "number": 60.0, "yes/no": 0.0})
    assert m["per_question_type"]["how many"] == pytest.approx(60.0)
    # Corpus BLEU: every 1-, 2- and 3-gram of the 6 candidate words matches; brevity penalty exp(1 - 9/6).
    bp = math.exp(1 - 9 / 6)
    for n in (1, 2, 3):
        assert m[f"bleu{n}"] == pytest.approx(bp, rel=1e-4)
    # ROUGE-L (beta 1.2): image 1 LCS 3 of 3 candidate / 6 reference words; image 2 exact.
    p, r, b2 = 1.0, 0.5, 1.2**2
    assert m["rouge_l"] == pytest.approx(((1 + b2) * p * r / (r + b2 * p) + 1.0) / 2, rel=1e-6)
    if java_available():
        assert 0.0 < m["meteor"] <= 1.0
    # the result files are written back in the standard formats
    assert json.loads((out / "vqa_results.json").read_text())[1] == {"question_id": 101, "answer": "two"}
    assert len(json.loads((out / "captions_results.json").read_text())) == 2
    assert "partial" not in m


@pytest.mark.skipif(not java_available(), reason="METEOR needs a Java runtime")
def test_evaluate_meteor_exact_and_disjoint(split_root: Path, tmp_path: Path) -> None:
    argv = ["evaluate", "--data-root", str(split_root), "--allow-partial", "--results"]  # image 1 of 2
    exact = _results(tmp_path, captions=[{"image_id": 1, "caption": "a red circle on the left"}])
    assert main([*argv, *exact, "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a/metrics.json").read_text())["meteor"] == pytest.approx(1.0)
    other = _results(tmp_path, captions=[{"image_id": 1, "caption": "purple elephants juggling"}])
    assert main([*argv, *other, "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b/metrics.json").read_text())["meteor"] == 0.0


def test_evaluate_no_meteor_flag(split_root: Path, tmp_path: Path) -> None:
    files = _results(tmp_path, captions=[{"image_id": 1, "caption": "a red circle"}, {"image_id": 2, "caption": "x"}])
    argv = ["evaluate", "--data-root", str(split_root), "--results", *files, "--out", str(tmp_path), "--no-meteor"]
    assert main(argv) == 0
    assert "meteor" not in json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read a JSON results file"),
        ('{"image_id": 1}', "non-empty JSON list"),
        ('[{"image_id": 1, "text": "x"}]', "'caption' or 'question_id'"),
        ('[{"image_id": "1", "caption": "x"}]', "entry 0 needs an integer 'image_id'"),
        ('[{"image_id": 1, "caption": "x"}, {"image_id": 99, "caption": "y"}]', "entry 1: image_id 99 is not in"),
        ('[{"question_id": 7, "answer": "x"}]', "question_id 7 is not in"),
    ],
)
def test_evaluate_bad_results_file_is_one_clear_error(
    split_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, content: str, message: str
) -> None:
    bad = tmp_path / "bad_results.json"
    bad.write_text(content)
    assert main(["evaluate", "--data-root", str(split_root), "--results", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad_results.json" in err and message in err
    assert not (tmp_path / "metrics.json").exists()


def test_evaluate_needs_model_or_results(split_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--data-root", str(split_root)]) == 2
    assert "--model" in capsys.readouterr().err


_ANSWERS = [{"question_id": 100, "answer": "red"}, {"question_id": 101, "answer": "two"}]  # 102 left out
_CAPTIONS = [{"image_id": 1, "caption": "a red circle"}]  # image 2 left out


@pytest.mark.parametrize(
    ("answers", "captions", "message"),
    [
        (_ANSWERS, None, "no result for 1 of the split's 3 question ids (e.g. [102])"),
        (None, _CAPTIONS, "no result for 1 of the split's 2 image ids (e.g. [2])"),
    ],
)
def test_evaluate_results_missing_ids_is_one_error_naming_how_many(
    split_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    answers: list[dict] | None,
    captions: list[dict] | None,
    message: str,
) -> None:
    """The official loaders refuse results that leave out part of the split; so do we, without --allow-partial."""
    files = _results(tmp_path, captions=captions, answers=answers)
    argv = ["evaluate", "--data-root", str(split_root), "--results", *files, "--out", str(tmp_path / "eval")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "--allow-partial" in err
    assert Path(files[0]).name in err
    assert not (tmp_path / "eval").exists()


def test_evaluate_allow_partial_scores_what_is_there_and_says_so(split_root: Path, tmp_path: Path) -> None:
    files = _results(tmp_path, captions=_CAPTIONS, answers=_ANSWERS)
    out = tmp_path / "eval"
    argv = ["evaluate", "--data-root", str(split_root), "--results", *files, "--out", str(out), "--allow-partial"]
    assert main([*argv, "--no-meteor"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["partial"] is True
    assert m["num_questions"] == 2
    assert m["vqa_accuracy"] == pytest.approx((100 + 60) / 2)  # "red" 10/10, "two" -> "2" 2/10
    assert m["per_answer_type"] == {"other": 100.0, "number": 60.0}
    assert m["bleu1"] == pytest.approx(math.exp(1 - 6 / 3))  # image 1 only: 3 words against 6, all matching
    assert len(json.loads((out / "captions_results.json").read_text())) == 1


def test_evaluate_allow_partial_with_complete_results_is_not_partial(split_root: Path, tmp_path: Path) -> None:
    files = _results(tmp_path, answers=[*_ANSWERS, {"question_id": 102, "answer": "yes"}])
    out = tmp_path / "eval"
    argv = ["evaluate", "--data-root", str(split_root), "--results", *files, "--out", str(out), "--allow-partial"]
    assert main(argv) == 0
    assert "partial" not in json.loads((out / "metrics.json").read_text())


def test_evaluate_duplicate_question_ids_warn_and_the_last_answer_wins(
    split_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The official VQA loader indexes results by question id, so a repeated id keeps its last answer."""
    answers = [
        {"question_id": 100, "answer": "blue"},
        {"question_id": 101, "answer": "3"},
        {"question_id": 102, "answer": "yes"},
        {"question_id": 100, "answer": "red"},  # wins over "blue": 100
        {"question_id": 101, "answer": "2"},  # wins over "3": 60
    ]
    files = _results(tmp_path, answers=answers)
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING, logger="vision_attn"):
        assert main(["evaluate", "--data-root", str(split_root), "--results", *files, "--out", str(out)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("question ids answered more than once: 2;" in w and "vqa_results.json" in w for w in warnings)
    m = json.loads((out / "metrics.json").read_text())
    assert m["vqa_accuracy"] == pytest.approx((100 + 60 + 100) / 3, abs=0.01)
    assert m["num_questions"] == 3 and "partial" not in m
    written = json.loads((out / "vqa_results.json").read_text())
    assert written == [
        {"question_id": 100, "answer": "red"},
        {"question_id": 101, "answer": "2"},
        {"question_id": 102, "answer": "yes"},
    ]


def test_evaluate_duplicate_image_ids_are_one_error(
    split_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The COCO caption toolkit's scorers take exactly one caption per image (BLEU asserts it): refuse, don't pick."""
    captions = [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}, {"image_id": 1, "caption": "c"}]
    files = _results(tmp_path, captions=captions)
    assert main(["evaluate", "--data-root", str(split_root), "--results", *files, "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "captions_results.json: image ids with more than one caption: 1 (e.g. [1])" in err
    assert not (tmp_path / "e").exists()
