"""SQuAD v1.1 exact match and F1, against behaviours of the official evaluation script."""
import json
import re

import pytest
from conftest import SQUAD_DEV_HEAD

from bert_squad.text.metric import evaluate, exact_match, f1, main, normalize_answer

pytestmark = pytest.mark.pure


@pytest.fixture(scope="module")
def dev_head(squad_head):
    return json.loads(squad_head.read_text(encoding="utf-8"))


def first_answers(dataset):
    return {
        qa["id"]: qa["answers"][0]["text"]
        for article in dataset["data"]
        for p in article["paragraphs"]
        for qa in p["qas"]
    }


@pytest.mark.parametrize(
    "text, normalized",
    [
        ("The  Quick, brown-fox!", "quick brownfox"),  # punctuation goes before articles
        ("an apple a day", "apple day"),
        ("Theatre at the Anthem", "theatre at anthem"),  # only whole-word articles
        ("“Denver”", "“denver”"),  # only ASCII punctuation is removed
        ("  Denver\tBroncos\n", "denver broncos"),
        ("A.", ""),
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_ignores_case_articles_and_punctuation():
    assert exact_match("the Denver Broncos!", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


def test_f1_of_partial_overlap_by_hand():
    # prediction: denver broncos won; truth: denver broncos. P = 2/3, R = 1, F1 = 0.8
    assert f1("Denver Broncos won", "the Denver Broncos") == pytest.approx(0.8)
    # Shared tokens counted with multiplicity: x y vs x y y... P = 2/3, R = 2/3
    assert f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1("Carolina", "Denver Broncos") == 0.0


def test_empty_answers_follow_the_v1_1_script():
    assert f1("", "Denver") == 0.0 and exact_match("", "Denver") == 0.0
    # Both normalize to nothing: equal strings, but no shared token.
    assert exact_match("The", "a") == 1.0
    assert f1("The", "a") == 0.0


def test_best_ground_truth_counts():
    truths = [{"text": "Denver Broncos"}, {"text": "Broncos"}, {"text": "the Broncos team"}]
    dataset = {"data": [{"paragraphs": [{"qas": [{"id": "q", "answers": truths}]}]}]}
    # "Broncos" is exact for the second truth.
    perfect = {"exact_match": 100.0, "f1": 100.0, "total": 1, "missing": 0}
    assert evaluate(dataset, {"q": "Broncos"}) == perfect
    # "Denver Broncos team": F1 0.8 against both the first and third truth.
    result = evaluate(dataset, {"q": "Denver Broncos team"})
    assert result["exact_match"] == 0.0 and result["f1"] == pytest.approx(80.0)


def test_first_ground_truth_scores_100_on_dev_head(dev_head):
    predictions = first_answers(dev_head)
    assert evaluate(dev_head, predictions) == {"exact_match": 100.0, "f1": 100.0, "total": 1877, "missing": 0}


def test_missing_and_wrong_predictions_score_zero(dev_head):
    predictions = first_answers(dev_head)
    ids = sorted(predictions)
    del predictions[ids[0]]
    predictions[ids[1]] = "zzzz"
    predictions["not-a-question"] = "ignored"
    result = evaluate(dev_head, predictions)
    assert result["missing"] == 1 and result["total"] == 1877
    assert result["exact_match"] == pytest.approx(100 * 1875 / 1877)
    assert result["f1"] == pytest.approx(100 * 1875 / 1877)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_command_prints_scores_and_gates_on_thresholds(dev_head, tmp_path, capsys):
    predictions = first_answers(dev_head)
    predictions[sorted(predictions)[0]] = "zzzz"
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(predictions))
    em = 100 * 1876 / 1877

    code, out, err = run(capsys, SQUAD_DEV_HEAD, path, "--json")
    assert code == 0 and err == ""
    assert json.loads(out) == pytest.approx({"exact_match": em, "f1": em, "total": 1877, "missing": 0})

    code, out, _ = run(capsys, SQUAD_DEV_HEAD, path, "--min-f1", "99.9", "--min-em", "99.9")
    assert code == 0 and out.startswith(f"exact_match {em:.2f}  f1 {em:.2f}")

    code, _, err = run(capsys, SQUAD_DEV_HEAD, path, "--min-f1", "99.99")
    assert code == 1 and f"FAIL: F1 {em:.2f} is below --min-f1 99.99" in err
    code, _, err = run(capsys, SQUAD_DEV_HEAD, path, "--min-em", "100")
    assert code == 1 and "exact match" in err


def test_command_reports_missing_predictions(dev_head, tmp_path, capsys):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps({}))
    code, out, err = run(capsys, SQUAD_DEV_HEAD, path)
    assert code == 0
    assert "1877 questions have no prediction and score 0" in err
    assert out.startswith("exact_match 0.00  f1 0.00")


@pytest.mark.parametrize(
    "dataset, predictions, message",
    [
        (None, "{}", "cannot read the dataset file"),
        ("{not json", "{}", "dataset file .* is not valid UTF-8 JSON"),
        ('{"version": "1.1"}', "{}", "not a SQuAD v1.1 dataset"),
        ('{"version": "1.1", "data": []}', "{}", "not a SQuAD v1.1 dataset"),
        ('{"version": "1.1", "data": [{"paragraphs": [{"qas": [{"id": "q"}]}]}]}', '{"q": "x"}', "answers"),
        ("USE_DEV_HEAD", "[]", "must hold one JSON object"),
        ("USE_DEV_HEAD", '{"q": 3}', "must hold one JSON object"),
        ("USE_DEV_HEAD", None, "cannot read the predictions file"),
    ],
)
def test_command_rejects_bad_files(tmp_path, capsys, dataset, predictions, message):
    paths = []
    for name, text in (("dataset.json", dataset), ("predictions.json", predictions)):
        if text == "USE_DEV_HEAD":
            paths.append(SQUAD_DEV_HEAD)
            continue
        paths.append(tmp_path / name)
        if text is not None:
            paths[-1].write_text(text)
    code, out, err = run(capsys, *paths)
    assert code == 2 and out == ""
    assert err.startswith("bert-squad-evaluate: ") and len(err.splitlines()) == 1
    assert re.search(message, err)


def test_command_warns_on_another_version_and_scores_anyway(tmp_path, capsys):
    qas = [{"id": "q", "answers": [{"text": "x"}]}]
    dataset = {"version": "2.0", "data": [{"paragraphs": [{"qas": qas}]}]}
    (tmp_path / "d.json").write_text(json.dumps(dataset))
    (tmp_path / "p.json").write_text(json.dumps({"q": "x"}))
    code, out, err = run(capsys, tmp_path / "d.json", tmp_path / "p.json", "--json")
    assert code == 0 and json.loads(out)["exact_match"] == 100.0
    assert "does not say version 1.1" in err
