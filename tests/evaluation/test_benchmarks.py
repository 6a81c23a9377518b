"""Paper benchmarks: tiny files in each public format, read and scored against hand-computed numbers."""

import json

import pytest
from PIL import Image

from mmmamba.data.conversations import IMAGE_MARK
from mmmamba.errors import MmmambaError
from mmmamba.evaluation.benchmarks import (
    BENCHMARKS,
    mme_label,
    normalize_vqa,
    parse_choice,
    pope_label,
    print_benchmark,
    read_benchmark,
    score_benchmark,
    vqa_accuracy,
)


def png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path, format="PNG")
    return path


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def check_image_marks(samples):
    for s in samples:
        assert len(s.images) == 1 and s.images[0].is_file()
        assert len(s.turns) == 1 and s.turns[0][0].startswith(IMAGE_MARK + "\n")
        assert sum(h.count(IMAGE_MARK) for h, _ in s.turns) == len(s.images)


# ------------------------------------------------------------------------------------------- MME


def mme_release(root):
    """existence: images and .txt side by side; artwork: images/ + questions_answers_YN/; one cognition task."""
    for name in ("1", "2"):
        png(root / "existence" / f"{name}.png")
    write(root / "existence" / "1.txt", "Is there a dog? Please answer yes or no.\tYes\nIs there a cat?\tNo\n")
    write(root / "existence" / "2.txt", "Is there a car?\tYes\n\nIs there a bus?\tNo\n")  # a blank line is skipped
    png(root / "artwork" / "images" / "10002.jpg")
    write(root / "artwork" / "questions_answers_YN" / "10002.txt", "Is it a painting?\tYes\r\nIs it glassware?\tNo\r\n")
    png(root / "code_reasoning" / "0001.png")
    write(root / "code_reasoning" / "0001.txt", "Does it print 3?\tYes\nDoes it print 4?\tNo\n")


def test_mme_release_folder_reads_in_official_order(tmp_path):
    mme_release(tmp_path)
    samples, info = read_benchmark("mme", tmp_path)
    assert [s.id for s in samples] == [
        "existence/1.png/0",
        "existence/1.png/1",
        "existence/2.png/0",
        "existence/2.png/1",
        "artwork/10002.jpg/0",
        "artwork/10002.jpg/1",
        "code_reasoning/0001.png/0",
        "code_reasoning/0001.png/1",
    ]
    check_image_marks(samples)
    first = samples[0]
    assert first.turns == [(f"{IMAGE_MARK}\nIs there a dog? Please answer yes or no.", "Yes")]
    assert first.family == "existence" and first.images == [tmp_path / "existence" / "1.png"]
    assert samples[4].images == [tmp_path / "artwork" / "images" / "10002.jpg"]
    assert info["artwork/10002.jpg/1"] == {"subtask": "artwork", "image": "10002.jpg", "answer": "no"}
    assert first.where == f"{tmp_path / 'existence' / '1.txt'}:1"


def test_mme_scores_acc_and_acc_plus_per_subtask(tmp_path):
    mme_release(tmp_path)
    samples, info = read_benchmark("mme", tmp_path)
    predictions = {
        "existence/1.png/0": "Yes, there is a dog.",
        "existence/1.png/1": "No",
        "existence/2.png/0": "yes",
        "existence/2.png/1": "Yes",  # wrong: image 2 misses acc+
        "artwork/10002.jpg/0": "YES",
        "artwork/10002.jpg/1": "no.",
        "code_reasoning/0001.png/0": "Yes",
        "code_reasoning/0001.png/1": "I think yes",  # "other": wrong
    }
    report = score_benchmark("mme", samples, info, predictions)
    assert report["subtasks"]["existence"] == {"score": 125.0, "acc": 75.0, "acc_plus": 50.0, "n": 4}
    assert report["subtasks"]["artwork"]["score"] == 200.0
    assert report["subtasks"]["code_reasoning"] == {"score": 50.0, "acc": 50.0, "acc_plus": 0.0, "n": 2}
    assert report["perception"] == 325.0 and report["cognition"] == 50.0
    assert report["score"] == 375.0 and report["n"] == 8 and report["missing"] == 0
    assert report["other_answers"] == 1 and report["benchmark"] == "mme"
    json.dumps(report)  # JSON-able


def test_mme_answer_parsing_is_the_eval_tools():
    assert mme_label("Yes") == "yes" and mme_label(" no\n") == "no"
    assert mme_label("Yes, it is.") == "yes" and mme_label("No, it is not.") == "no"
    assert mme_label("not sure") == "no"  # "no" in the first 4 characters, as the official tool
    assert mme_label("There is a dog") == "other" and mme_label("") == "other"


def test_mme_your_results_form_scores_its_prediction_column(tmp_path):
    png(tmp_path / "existence" / "1.png")
    png(tmp_path / "OCR" / "images" / "7.jpg")
    write(
        tmp_path / "Your_Results" / "existence.txt",
        "1.png\tIs there a dog?\tYes\tYes\n1.png\tIs there a cat?\tNo\tYes\n",
    )
    write(tmp_path / "Your_Results" / "OCR.txt", "7.jpg\tIs it 'STOP'?\tYes\tyes\n7.jpg\tIs it 'GO'?\tNo\tno\n")
    samples, info = read_benchmark("mme", tmp_path)
    assert [s.id for s in samples] == ["existence/1.png/0", "existence/1.png/1", "OCR/7.jpg/0", "OCR/7.jpg/1"]
    assert samples[2].images == [tmp_path / "OCR" / "images" / "7.jpg"]
    check_image_marks(samples)
    report = score_benchmark("mme", samples, info, {})  # the 4th column stands in for predictions
    assert report["subtasks"]["existence"]["score"] == 50.0  # acc 50 + acc+ 0
    assert report["subtasks"]["OCR"]["score"] == 200.0
    assert report["score"] == 250.0 and report["missing"] == 0
    # a given prediction wins over the file's column
    fixed = score_benchmark("mme", samples, info, {"existence/1.png/1": "No"})
    assert fixed["score"] == 400.0
    # the same folder read by pointing at Your_Results itself
    assert [s.id for s in read_benchmark("mme", tmp_path / "Your_Results")[0]] == [s.id for s in samples]


def test_mme_errors_name_the_file(tmp_path):
    with pytest.raises(MmmambaError, match="no MME subtask folders"):
        read_benchmark("mme", tmp_path)
    png(tmp_path / "color" / "1.png")
    write(tmp_path / "color" / "1.txt", "Is it red?\tMaybe\n")
    with pytest.raises(MmmambaError, match=r"1\.txt:1: answer 'Maybe' must be Yes or No"):
        read_benchmark("mme", tmp_path)
    write(tmp_path / "color" / "2.txt", "Is it red?\tYes\n")
    (tmp_path / "color" / "1.txt").unlink()
    with pytest.raises(MmmambaError, match=r"2\.txt: no image 2\.jpg or \.png"):
        read_benchmark("mme", tmp_path)


# ------------------------------------------------------------------------------------------ POPE


def pope_file(path, rows):
    write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_pope_reads_files_and_scores_a_confusion_matrix(tmp_path):
    labels = ["yes", "yes", "yes", "no", "no"]
    for family in ("random", "popular"):
        rows = [
            {"question_id": i + 1, "image": f"COCO_val2014_{i}.jpg", "text": f"Is there a thing {i}?", "label": lab}
            for i, lab in enumerate(labels)
        ]
        pope_file(tmp_path / "coco" / f"coco_pope_{family}.json", rows)
    for i in range(5):
        png(tmp_path / "val2014" / f"COCO_val2014_{i}.jpg")  # LLaVA's layout: images beside the coco/ folder
    samples, info = read_benchmark("pope", tmp_path / "coco")
    assert [s.family for s in samples] == ["random"] * 5 + ["popular"] * 5  # random, popular, adversarial order
    assert samples[0].id == "random/1" and info["random/4"] == {"label": "no"}
    assert samples[0].turns[0] == (
        f"{IMAGE_MARK}\nIs there a thing 0?\nAnswer the question using a single word or phrase.",
        "yes",
    )
    check_image_marks(samples)
    # random: TP 2, FN 1, FP 1, TN 1
    random = ["Yes, there is.", "yes", "There is no thing.", "Yes", "No, it is not."]
    predictions = {f"random/{i + 1}": p for i, p in enumerate(random)}
    predictions.update({f"popular/{i + 1}": lab for i, lab in enumerate(labels)})  # all right
    report = score_benchmark("pope", samples, info, predictions)
    r = report["families"]["random"]
    assert r["accuracy"] == pytest.approx(3 / 5) and r["yes_ratio"] == pytest.approx(3 / 5)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3) and r["n"] == 5
    assert report["families"]["popular"]["f1"] == 1.0
    assert report["score"] == pytest.approx((2 / 3 + 1) / 2) and report["f1"] == report["score"]
    assert report["accuracy"] == pytest.approx(0.8) and report["n"] == 10


def test_pope_answer_parsing_is_the_official_evals():
    assert pope_label("Yes") == "yes" and pope_label("No") == "no"
    assert pope_label("No, there is no dog.") == "no"
    assert pope_label("There is not a dog in the image.") == "no"
    assert pope_label("Yes. No other animals are present.") == "yes"  # only the first sentence counts
    assert pope_label("no,") == "no"  # commas are dropped before splitting
    assert pope_label("NO") == "yes"  # the official eval is case-sensitive
    assert pope_label("") == "yes"


def test_pope_single_file_and_bad_label(tmp_path):
    png(tmp_path / "a.jpg")
    f = tmp_path / "coco_pope_adversarial.json"
    pope_file(f, [{"question_id": 7, "image": "a.jpg", "text": "Is there a cat?", "label": "no"}])
    samples, info = read_benchmark("pope", f)
    assert [s.id for s in samples] == ["adversarial/7"]
    report = score_benchmark("pope", samples, info, {})
    assert report["missing"] == 1 and report["families"]["adversarial"]["yes_ratio"] == 1.0  # "" parses as yes
    pope_file(f, [{"question_id": 7, "image": "a.jpg", "text": "Is there a cat?", "label": "maybe"}])
    with pytest.raises(MmmambaError, match=r"coco_pope_adversarial\.json:1: expected a POPE question"):
        read_benchmark("pope", f)
    pope_file(f, [{"question_id": 7, "image": "b.jpg", "text": "Is there a cat?", "label": "no"}])
    with pytest.raises(MmmambaError, match=r"json:1: image b\.jpg not found in"):
        read_benchmark("pope", f)


# --------------------------------------------------------------------------------------- TextVQA


def textvqa_folder(root):
    data = [
        {
            "question_id": 34602,
            "question": "How many cars?",
            "image_id": "abc",
            "answers": ["Two", "2"] + ["three"] * 8,
        },
        {
            "question_id": 34603,
            "question": "What animal?",
            "image_id": "def",
            "answers": ["the cat."] * 3 + ["dog"] * 7,
        },
    ]
    for item in data:
        item["set_name"] = "val"
        png(root / "train_images" / f"{item['image_id']}.jpg")
    write(root / "TextVQA_0.5.1_val.json", json.dumps({"dataset_name": "textvqa", "data": data}))


def test_textvqa_reads_val_and_scores_vqa_accuracy(tmp_path):
    textvqa_folder(tmp_path)
    samples, info = read_benchmark("textvqa", tmp_path)  # split "test" reads val: test answers are hidden
    assert [s.id for s in samples] == ["34602", "34603"] and samples[0].family == "val"
    assert samples[0].images == [tmp_path / "train_images" / "abc.jpg"]
    assert samples[0].turns == [
        (f"{IMAGE_MARK}\nHow many cars?\nAnswer the question using a single word or phrase.", "three")
    ]
    assert samples[1].turns[0][1] == "dog" and len(info["34603"]["answers"]) == 10
    check_image_marks(samples)
    # "2" matches 2 of 10 humans ("Two" normalises to "2"): (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    # "Cat" matches 3 ("the cat."): (3 * 2/3 + 7 * 1) / 10 = 0.9
    report = score_benchmark("textvqa", samples, info, {"34602": "2", "34603": "Cat"})
    assert report["score"] == pytest.approx(0.75) and report["accuracy"] == report["score"]
    assert report["families"]["val"] == {"accuracy": pytest.approx(0.75), "n": 2}
    assert score_benchmark("textvqa", samples, info, {"34602": "three", "34603": "bird"})["score"] == 0.5


def test_vqa_accuracy_and_normalisation():
    answers = ["two", "two"] + ["three"] * 8
    assert vqa_accuracy("2", answers) == pytest.approx(0.6)
    assert vqa_accuracy("three", answers) == 1.0 and vqa_accuracy("four", answers) == 0.0
    assert vqa_accuracy("x", ["x"] + ["y"] * 9) == pytest.approx(0.9 / 3)  # 9 sets hold the one match
    assert normalize_vqa("Two") == "2" and normalize_vqa("the cat.") == "cat"
    assert normalize_vqa("An Apple!") == "apple" and normalize_vqa("dont") == "don't"
    assert normalize_vqa("Coca-Cola") == "coca cola" and normalize_vqa("3.5") == "3.5"
    assert normalize_vqa("1,000") == "1000" and normalize_vqa(" yes\n") == "yes"


def test_textvqa_errors(tmp_path):
    with pytest.raises(MmmambaError, match=r"TextVQA_0\.5\.1_val\.json: not found; point --data at the folder"):
        read_benchmark("textvqa", tmp_path)
    write(tmp_path / "TextVQA_0.5.1_val.json", json.dumps({"data": [{"question": "Q?", "image_id": "abc"}]}))
    with pytest.raises(MmmambaError, match=r"data\[0\]: no 'answers' list"):
        read_benchmark("textvqa", tmp_path)


# ------------------------------------------------------------------------------------- ScienceQA


def scienceqa_folder(root, with_splits=False):
    problems = {
        "1": {
            "question": "Which animal is a mammal?",
            "choices": ["frog", "dog", "trout"],
            "answer": 1,
            "hint": "Look at the picture.",
            "image": "image.png",
            "split": "test",
            "subject": "natural science",
        },
        "2": {
            "question": "Which word is a noun?",
            "choices": ["run", "table"],
            "answer": 1,
            "hint": "",
            "image": "image.png",
            "split": "test",
            "subject": "language science",
        },
        "3": {
            "question": "No image here?",
            "choices": ["a", "b"],
            "answer": 0,
            "hint": "",
            "image": None,
            "split": "test",
        },
        "4": {
            "question": "Train only?",
            "choices": ["a", "b"],
            "answer": 0,
            "hint": "",
            "image": "image.png",
            "split": "train",
        },
    }
    write(root / "problems.json", json.dumps(problems))
    for pid in ("1", "2"):
        png(root / "images" / "test" / pid / "image.png")
    png(root / "images" / "train" / "4" / "image.png")
    if with_splits:
        write(root / "pid_splits.json", json.dumps({"test": ["2", "3"], "train": ["4"]}))


def test_scienceqa_img_subset_prompt_and_accuracy(tmp_path):
    scienceqa_folder(tmp_path)
    samples, info = read_benchmark("scienceqa", tmp_path)
    assert [s.id for s in samples] == ["1", "2"]  # 3 has no image, 4 is train
    assert samples[0].turns == [
        (
            f"{IMAGE_MARK}\nContext: Look at the picture.\nWhich animal is a mammal?\nA. frog\nB. dog\nC. trout\n"
            "Answer with the option's letter from the given choices directly.",
            "B",
        )
    ]
    assert samples[1].turns[0][0].startswith(f"{IMAGE_MARK}\nWhich word is a noun?\nA. run\nB. table\n")  # no hint
    assert samples[0].images == [tmp_path / "images" / "test" / "1" / "image.png"]
    assert info["1"] == {"choices": ["frog", "dog", "trout"], "answer": "B"}
    check_image_marks(samples)
    report = score_benchmark("scienceqa", samples, info, {"1": "The answer is B.", "2": "A"})
    assert report["score"] == 0.5 and report["accuracy"] == 0.5 and report["n"] == 2
    assert report["families"] == {
        "natural science": {"accuracy": 1.0, "n": 1},
        "language science": {"accuracy": 0.0, "n": 1},
    }
    assert score_benchmark("scienceqa", samples, info, {"1": "dog", "2": "(B)"})["score"] == 1.0
    train, _ = read_benchmark("scienceqa", tmp_path, split="train")
    assert [s.id for s in train] == ["4"]


def test_scienceqa_pid_splits_and_limit(tmp_path):
    scienceqa_folder(tmp_path, with_splits=True)
    samples, _ = read_benchmark("scienceqa", tmp_path)
    assert [s.id for s in samples] == ["2"]  # pid_splits.json decides the split
    with pytest.raises(MmmambaError, match=r"pid_splits\.json: no split 'minival'; choose one of test, train"):
        read_benchmark("scienceqa", tmp_path, split="minival")
    (tmp_path / "pid_splits.json").unlink()
    assert [s.id for s in read_benchmark("scienceqa", tmp_path, limit=1)[0]] == ["1"]


def test_parse_choice():
    choices = ["iron nail", "a magnet", "wood"]
    assert parse_choice("B", choices) == 1 and parse_choice("b", choices) == 1
    assert parse_choice("(C)", choices) == 2 and parse_choice("A.", choices) == 0
    assert parse_choice("The answer is B.", choices) == 1
    assert parse_choice("A magnet.", choices) == 1  # the whole answer is an option's text
    assert parse_choice("B. a magnet", choices) == 1
    assert parse_choice("I think C is right", choices) == 2  # "I" names no option
    assert parse_choice("The answer is D.", choices) == -1  # past the last option
    assert parse_choice("D", choices) == -1 and parse_choice("none of them", choices) == -1


def test_scienceqa_missing_file_message(tmp_path):
    with pytest.raises(MmmambaError) as e:
        read_benchmark("scienceqa", tmp_path)
    assert (
        str(e.value)
        == f"{tmp_path / 'problems.json'}: not found; point --data at the ScienceQA folder holding problems.json"
    )
    write(
        tmp_path / "problems.json",
        json.dumps({"1": {"question": "Q", "choices": ["a"], "answer": 3, "image": "x.png", "split": "test"}}),
    )
    with pytest.raises(MmmambaError, match=r"problem 1: expected 'question', 'choices'"):
        read_benchmark("scienceqa", tmp_path)


# ---------------------------------------------------------------------------------------- common


def test_unknown_name_missing_path_and_empty(tmp_path):
    assert BENCHMARKS == ("mme", "pope", "textvqa", "scienceqa")
    with pytest.raises(MmmambaError, match="unknown benchmark 'gqa'; choose one of mme, pope, textvqa, scienceqa"):
        read_benchmark("gqa", tmp_path)
    with pytest.raises(MmmambaError, match=r"nope: not found; point --data at the folder holding coco_pope"):
        read_benchmark("pope", tmp_path / "nope")
    write(tmp_path / "coco_pope_random.json", "\n")
    with pytest.raises(MmmambaError, match="holds no pope questions"):
        read_benchmark("pope", tmp_path)


def test_print_benchmark(tmp_path, capsys):
    mme_release(tmp_path)
    samples, info = read_benchmark("mme", tmp_path)
    print_benchmark(score_benchmark("mme", samples, info, {s.id: s.turns[0][1] for s in samples}))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "mme: score 600.00 over 8 questions"
    assert out[1] == "  perception 400.00  cognition 200.00"
    assert out[2].split() == ["score", "acc", "acc_plus", "n"]
    assert out[3].split() == ["existence", "200.00", "100.00", "100.00", "4"]


def test_eval_benchmark_refuses_options_it_would_ignore(tmp_path, capsys):
    from mmmamba.cli.main import main

    base = ["eval", "--model", "models/tiny-teacher", "--benchmark", "pope", "--data", str(tmp_path)]
    (tmp_path / "mc.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "label": 0}\n')
    for extra in (["--teacher", "models/tiny-teacher"], ["--choices", str(tmp_path / "mc.jsonl")]):
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and extra[0] in err and "--benchmark" in err
