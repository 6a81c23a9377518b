"""The mmMamba paper's benchmarks, read from the public files a user holds locally and scored as
their official evaluation code scores them. Nothing is downloaded.

- MME: the release folder (one folder per subtask: ``images/`` + ``questions_answers_YN/*.txt``,
  or images and same-named ``.txt`` files side by side; a line is ``question<TAB>Yes|No``, two
  questions per image), or the eval tool's ``Your_Results/<subtask>.txt``
  (``image<TAB>question<TAB>answer[<TAB>prediction]``) inside the release folder. An answer is
  "yes" / "no" when it is exactly that, else when its first 4 characters contain "yes", then
  "no", else "other" (wrong). Per subtask acc = % questions right, acc+ = % images with every
  question right, score = acc + acc+ (0-200); perception and cognition are sums of subtask scores.
- POPE: ``coco_pope_{random,popular,adversarial}.json`` (one JSON object a line: ``question_id``,
  ``image``, ``text``, ``label``) and the COCO val2014 images. As the official eval: keep the first
  sentence, drop commas, and a word "No", "no" or "not" makes the answer "no", else "yes".
  Accuracy, precision, recall, F1 (positive = yes) and yes-ratio per file, and their means.
- TextVQA: ``TextVQA_0.5.1_val.json`` (``{"data": [{question_id, question, image_id, answers}]}``)
  and ``<image_id>.jpg`` images. VQA accuracy with the EvalAI answer normalisation: the mean over
  the 10 leave-one-out sets of 9 human answers of min(1, matches / 3).
- ScienceQA-IMG: ``problems.json`` (id -> question, choices, answer index, hint, image, split),
  optional ``pid_splits.json``, images at ``[images/]<split>/<id>/image.png``; only problems with
  an image. Prompt: ``Context: <hint>`` (when there is one), the question, lettered options and
  "Answer with the option's letter from the given choices directly."; multiple-choice accuracy.

``read_benchmark`` gives ``Sample``s (one image, one turn: ``<image>\\n`` + question, reference
answer) and per-sample scoring info by id; ``score_benchmark`` turns predictions (by sample id)
into a JSON-able report whose ``score`` is the paper's headline number: MME perception +
cognition, POPE mean F1, TextVQA accuracy, ScienceQA-IMG accuracy (the last three in 0..1).
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter, defaultdict
from pathlib import Path

from ..data.conversations import IMAGE_MARK, Sample
from ..errors import MmmambaError
from ..io import iter_jsonl, read_json, read_regular

BENCHMARKS = ("mme", "pope", "textvqa", "scienceqa")
SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's POPE / TextVQA prompt
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
MME_PERCEPTION = tuple("existence count position color posters celebrity scene landmark artwork OCR".split())
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
FIXES = {
    "mme": "point --data at MME_Benchmark_release_version (the folder holding existence/, OCR/, ... or Your_Results/)",
    "pope": "point --data at the folder holding coco_pope_random.json etc. (or at one of them)",
    "textvqa": "point --data at the folder holding TextVQA_0.5.1_val.json and train_images/ (or at the file)",
    "scienceqa": "point --data at the ScienceQA folder holding problems.json",
}


# ---------------------------------------------------------------------------------------- reading


def read_benchmark(name: str, path, split: str = "test", limit: int | None = None) -> tuple[list[Sample], dict]:
    """The first ``limit`` questions of benchmark ``name`` under ``path``, and their scoring info by id.

    ``split`` picks ScienceQA's split and TextVQA's file ("test" reads val: TextVQA's test answers
    are hidden); MME and POPE have one set each.
    """
    _check_name(name)
    path = Path(path)
    if not path.exists():
        raise MmmambaError(f"{path}: not found; {FIXES[name]}")
    reader = {"mme": _read_mme, "pope": _read_pope, "textvqa": _read_textvqa, "scienceqa": _read_scienceqa}[name]
    samples, info = [], {}
    for sample, extra in itertools.islice(reader(path, split), limit):
        if sample.id in info:
            raise MmmambaError(f"{sample.where}: question id {sample.id} appears twice; remove the duplicate")
        samples.append(sample)
        info[sample.id] = extra
    if not samples:
        raise MmmambaError(f"{path}: holds no {name} questions (split {split!r}); {FIXES[name]}")
    return samples, info


def _check_name(name: str) -> None:
    if name not in BENCHMARKS:
        raise MmmambaError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")


def _sample(sid: str, family: str, image: Path, question: str, answer: str, where: str) -> Sample:
    return Sample(sid, family, [image], [(f"{IMAGE_MARK}\n{question}", answer)], where)


def _find_image(name: str, folders: list[Path], where: str) -> Path:
    """``name`` in the first of ``folders`` that has it; a missing image is an error naming them."""
    if not name or Path(name).name != name:
        raise MmmambaError(f"{where}: image name {name!r} must be a plain file name")
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    tried = ", ".join(f"{f}/" for f in folders)
    raise MmmambaError(f"{where}: image {name} not found in {tried}; put the benchmark's images there")


def _tsv(path: Path):
    """(``file:line``, stripped columns) for every non-blank line of a tab-separated text file."""
    try:
        text = read_regular(path, "benchmark question file").decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MmmambaError(f"{path}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield f"{path}:{n}", [c.strip() for c in line.split("\t")]


def _mme_root(folder: Path) -> Path:
    return folder / "MME_Benchmark" if (folder / "MME_Benchmark").is_dir() else folder


def _mme_rows(path: Path):
    """(subtask, image, question, answer, prediction or None, where) in the official order."""
    results = path / "Your_Results" if (path / "Your_Results").is_dir() else path
    if any((results / f"{t}.txt").is_file() for t in MME_PERCEPTION + MME_COGNITION):
        root = _mme_root(results.parent)  # the eval tool's form: images in the subtask folders beside it
        for task in MME_PERCEPTION + MME_COGNITION:
            if (results / f"{task}.txt").is_file():
                for where, cols in _tsv(results / f"{task}.txt"):
                    if len(cols) not in (3, 4):
                        raise MmmambaError(f"{where}: expected image<TAB>question<TAB>answer[<TAB>prediction]")
                    image = _find_image(cols[0], [root / task / "images", root / task], where)
                    yield task, image, cols[1], cols[2], (cols[3] if len(cols) == 4 else None), where
        return
    root = _mme_root(path)
    tasks = [t for t in MME_PERCEPTION + MME_COGNITION if (root / t).is_dir()]
    if not tasks:
        raise MmmambaError(f"{path}: no MME subtask folders (existence/, OCR/, ...) or Your_Results/; {FIXES['mme']}")
    for task in tasks:
        qa_dir, image_dir = root / task / "questions_answers_YN", root / task / "images"
        if not qa_dir.is_dir():  # images and their .txt side by side
            qa_dir = image_dir = root / task
        for txt in sorted(qa_dir.glob("*.txt")):
            image = next((p for e in IMAGE_EXTS if (p := image_dir / (txt.stem + e)).is_file()), None)
            if image is None:
                raise MmmambaError(f"{txt}: no image {txt.stem}.jpg or .png in {image_dir}/; restore the MME release")
            for where, cols in _tsv(txt):
                if len(cols) != 2:
                    raise MmmambaError(f"{where}: expected question<TAB>answer")
                yield task, image, cols[0], cols[1], None, where


def _read_mme(path: Path, split: str):
    seen = Counter()
    for task, image, question, answer, prediction, where in _mme_rows(path):
        if answer.lower() not in ("yes", "no"):
            raise MmmambaError(f"{where}: answer {answer!r} must be Yes or No")
        k = seen[task, image.name]
        seen[task, image.name] += 1
        extra = {"subtask": task, "image": image.name, "answer": answer.lower()}
        if prediction is not None:
            extra["prediction"] = prediction
        yield _sample(f"{task}/{image.name}/{k}", task, image, question, answer, where), extra


def _pope_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    order = {"random": 0, "popular": 1, "adversarial": 2}
    files = sorted(path.glob("*pope*.json"), key=lambda f: (order.get(f.stem.rsplit("_", 1)[-1], 3), f.name))
    if not files:
        raise MmmambaError(f"{path}: no *pope*.json question files; {FIXES['pope']}")
    return files


def _read_pope(path: Path, split: str):
    files = _pope_files(path)
    families = [f.stem.rsplit("_", 1)[-1] for f in files]
    if len(set(families)) < len(families):  # e.g. coco and aokvqa files side by side
        families = [f.stem for f in files]
    for f, family in zip(files, families):
        folders = [f.parent, f.parent / "images", f.parent / "val2014", f.parent.parent / "val2014"]
        for where, rec in iter_jsonl(f, "line (or remove it)"):
            ok = isinstance(rec, dict) and all(isinstance(rec.get(k), str) for k in ("image", "text", "label"))
            if not ok or "question_id" not in rec or rec["label"] not in ("yes", "no"):
                raise MmmambaError(f"{where}: expected a POPE question {{question_id, image, text, label: yes|no}}")
            image = _find_image(rec["image"], folders, where)
            sid = f"{family}/{rec['question_id']}"
            question = f"{rec['text']}\n{SHORT_ANSWER}"
            yield _sample(sid, family, image, question, rec["label"], where), {"label": rec["label"]}


def _read_textvqa(path: Path, split: str):
    split = "val" if split == "test" else split  # the test answers are hidden; the paper reports val
    file = path if path.is_file() else path / f"TextVQA_0.5.1_{split}.json"
    if not file.is_file():
        raise MmmambaError(f"{file}: not found; {FIXES['textvqa']}")
    data = read_json(file, "TextVQA question file").get("data")
    if not isinstance(data, list):
        raise MmmambaError(f"{file}: expected {{'data': [questions]}}; not a TextVQA question file")
    folders = [file.parent, file.parent / "train_images", file.parent / "images"]
    for i, q in enumerate(data):
        where = f"{file}: data[{i}]"
        if not isinstance(q, dict) or not all(isinstance(q.get(k), str) for k in ("question", "image_id")):
            raise MmmambaError(f"{where}: expected a question with 'question_id', 'question', 'image_id', 'answers'")
        answers = q.get("answers")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise MmmambaError(f"{where}: no 'answers' list (the test split's are hidden); use TextVQA_0.5.1_val.json")
        image = _find_image(f"{q['image_id']}.jpg", folders, where)
        top = Counter(map(normalize_vqa, answers)).most_common(1)[0][0]
        reference = next(a for a in answers if normalize_vqa(a) == top)
        family = str(q.get("set_name") or split)
        question = f"{q['question']}\n{SHORT_ANSWER}"
        yield _sample(str(q.get("question_id", i)), family, image, question, reference, where), {"answers": answers}


def _read_scienceqa(path: Path, split: str):
    file = path if path.is_file() else path / "problems.json"
    if not file.is_file():
        raise MmmambaError(f"{file}: not found; {FIXES['scienceqa']}")
    problems, root = read_json(file, "ScienceQA problems.json"), file.parent
    if (root / "pid_splits.json").is_file():
        splits = read_json(root / "pid_splits.json", "ScienceQA pid_splits.json")
        if not isinstance(splits.get(split), list):
            raise MmmambaError(f"{root / 'pid_splits.json'}: no split {split!r}; choose one of {', '.join(splits)}")
        pids = [str(p) for p in splits[split]]
    else:
        pids = [pid for pid, p in problems.items() if isinstance(p, dict) and p.get("split") == split]
    for pid in pids:
        p, where = problems.get(pid), f"{file}: problem {pid}"
        if not isinstance(p, dict):
            raise MmmambaError(f"{where}: missing or not an object; use the problems.json of this pid_splits.json")
        if not p.get("image"):
            continue  # the IMG subset: only problems with an image
        choices, answer = p.get("choices"), p.get("answer")
        ok = isinstance(p.get("question"), str) and isinstance(choices, list) and 2 <= len(choices) <= 26
        ok = ok and all(isinstance(c, str) for c in choices) and isinstance(answer, int) and 0 <= answer < len(choices)
        if not ok:
            raise MmmambaError(f"{where}: expected 'question', 'choices' (list of text) and 'answer' (a choice index)")
        image_split = str(p.get("split", split))
        image = _find_image(str(p["image"]), [root / "images" / image_split / pid, root / image_split / pid], where)
        context = f"Context: {p['hint']}\n" if p.get("hint") else ""
        options = "\n".join(f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(choices))
        question = f"{context}{p['question']}\n{options}\n{LETTER_ANSWER}"
        letter = string.ascii_uppercase[answer]
        family = str(p.get("subject") or "all")
        yield _sample(pid, family, image, question, letter, where), {"choices": choices, "answer": letter}


# ------------------------------------------------------------------------------ answer parsing


def mme_label(text: str) -> str:
    """MME's eval tool: "yes" / "no" if exactly that, else by "yes", then "no", in the first 4 characters."""
    text = text.lower().strip()
    if text in ("yes", "no"):
        return text
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def pope_label(text: str) -> str:
    """POPE's official eval: first sentence, no commas; the words "No", "no" or "not" mean no."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


# The EvalAI / official VQA answer normalisation (as in LLaVA's and lmms-eval's TextVQA scorers). Upstream's
# map also has "Im", "Ive", "Id've", "I'dve", which never match lower-cased text, and maps "somebody'd" the wrong way
# round; both are kept as upstream behaves.
_CONTRACTIONS = dict(
    pair.split(":")
    for pair in """aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
    couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've hadn'tve:hadn't've
    hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd howll:how'll hows:how's
    isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've itll:it'll
    maam:ma'am mightnt:mightn't mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't
    mustve:must've neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
    'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've shouldve:should've shouldnt:shouldn't
    shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've
    somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's someoned:someone'd
    someoned've:someone'd've someone'dve:someone'd've someonell:someone'll someones:someone's
    somethingd:something'd somethingd've:something'd've something'dve:something'd've somethingll:something'll
    thats:that's thered:there'd thered've:there'd've there'dve:there'd've therere:there're theres:there's
    theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas
    wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll whatre:what're
    whats:what's whatve:what've whens:when's whered:where'd wheres:where's whereve:where've whod:who'd
    whod've:who'd've who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're whys:why's
    wont:won't wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all
    yall'll:y'all'll y'allll:y'all'll yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd
    youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've""".split()
)
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = ("a", "an", "the")
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit ("(?!<=" is upstream's typo)
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")


def normalize_vqa(answer: str) -> str:
    """EvalAI's VQA answer processing: lower case, punctuation, number words to digits, no articles."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCTUATION:
        joined = p + " " in text or " " + p in text or _COMMA_STRIP.search(text) is not None
        out = out.replace(p, "" if joined else " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Mean over the leave-one-out sets of human answers of min(1, matches / 3)."""
    pred, gts = normalize_vqa(prediction), [normalize_vqa(a) for a in answers]
    matches = sum(g == pred for g in gts)
    return sum(min(1.0, (matches - (g == pred)) / 3) for g in gts) / len(gts)


def parse_choice(text: str, choices: list[str]) -> int:
    """The index of the option a free-text answer names, or -1.

    In order: the whole answer is a letter ("B", "(b)", "B."); the whole answer is an option's text;
    "answer is X"; else the first standalone capital letter that names an option. A letter past the
    last option is -1 (wrong).
    """
    letters = string.ascii_uppercase[: len(choices)]
    text = text.strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.:)]?", text)
    if m:
        return letters.find(m.group(1).upper())
    norm = lambda s: s.strip().rstrip(".").strip().lower()  # noqa: E731
    for i, c in enumerate(choices):
        if norm(c) == norm(text):
            return i
    m = re.search(r"(?i:answer is)\s*:?\s*\(?([A-Z])\b", text)
    if m:
        return letters.find(m.group(1))
    for m in re.finditer(r"(?<![A-Za-z])[A-Z](?![A-Za-z])", text):
        if m.group(0) in letters:
            return letters.index(m.group(0))
    return -1


# ------------------------------------------------------------------------------------- scoring


def score_benchmark(name: str, samples: list[Sample], info: dict, predictions: dict[str, str]) -> dict:
    """A JSON-able report: ``benchmark``, the headline ``score``, a per-family breakdown and ``n``.

    A sample without a prediction counts as wrong (``missing`` counts them); for MME a prediction
    column in ``Your_Results`` stands in for a missing prediction.
    """
    _check_name(name)
    answers = {s.id: predictions.get(s.id, info[s.id].get("prediction")) for s in samples}
    missing = sum(a is None for a in answers.values())
    answers = {k: a or "" for k, a in answers.items()}
    scorer = {"mme": _score_mme, "pope": _score_pope, "textvqa": _score_textvqa, "scienceqa": _score_scienceqa}[name]
    return {"benchmark": name, **scorer(samples, info, answers), "n": len(samples), "missing": missing}


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _score_mme(samples, info, answers) -> dict:
    right = defaultdict(list)  # subtask -> [question right?]
    image_right = defaultdict(dict)  # subtask -> image -> every question right?
    other = 0
    for s in samples:
        x, label = info[s.id], mme_label(answers[s.id])
        ok = label == x["answer"]
        right[x["subtask"]].append(ok)
        image_right[x["subtask"]][x["image"]] = image_right[x["subtask"]].get(x["image"], True) and ok
        other += label == "other"
    subtasks = {}
    for task in MME_PERCEPTION + MME_COGNITION:
        if task in right:
            acc, acc_plus = 100 * _mean(right[task]), 100 * _mean(image_right[task].values())
            subtasks[task] = {"score": acc + acc_plus, "acc": acc, "acc_plus": acc_plus, "n": len(right[task])}
    perception = sum(v["score"] for k, v in subtasks.items() if k in MME_PERCEPTION)
    cognition = sum(v["score"] for k, v in subtasks.items() if k in MME_COGNITION)
    return {
        "score": perception + cognition,
        "perception": perception,
        "cognition": cognition,
        "subtasks": subtasks,
        "other_answers": other,
    }


def binary_scores(labels: list[str], preds: list[str]) -> dict:
    """Accuracy, precision, recall, F1 (positive = "yes") and the share of "yes" predictions."""
    tp = sum(t == p == "yes" for t, p in zip(labels, preds))
    fp = sum(t == "no" and p == "yes" for t, p in zip(labels, preds))
    fn = sum(t == "yes" and p == "no" for t, p in zip(labels, preds))
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "accuracy": _mean(t == p for t, p in zip(labels, preds)),
        "precision": precision,
        "recall": recall,
        "yes_ratio": _mean(p == "yes" for p in preds),
        "n": len(labels),
    }


def _score_pope(samples, info, answers) -> dict:
    labels, preds = defaultdict(list), defaultdict(list)
    for s in samples:
        labels[s.family].append(info[s.id]["label"])
        preds[s.family].append(pope_label(answers[s.id]))
    families = {f: binary_scores(labels[f], preds[f]) for f in labels}
    means = {k: _mean(v[k] for v in families.values()) for k in ("f1", "accuracy", "precision", "recall", "yes_ratio")}
    return {"score": means["f1"], **means, "families": families}


def _per_family(samples, right: dict) -> dict:
    by = defaultdict(list)
    for s in samples:
        by[s.family].append(right[s.id])
    return {f: {"accuracy": _mean(v), "n": len(v)} for f, v in by.items()}


def _score_textvqa(samples, info, answers) -> dict:
    acc = {s.id: vqa_accuracy(answers[s.id], info[s.id]["answers"]) for s in samples}
    return {"score": _mean(acc.values()), "accuracy": _mean(acc.values()), "families": _per_family(samples, acc)}


def _score_scienceqa(samples, info, answers) -> dict:
    picked = {s.id: parse_choice(answers[s.id], info[s.id]["choices"]) for s in samples}
    right = {s.id: picked[s.id] == string.ascii_uppercase.find(info[s.id]["answer"]) for s in samples}
    accuracy = _mean(right.values())
    unparsed = sum(p == -1 for p in picked.values())
    return {"score": accuracy, "accuracy": accuracy, "families": _per_family(samples, right), "unparsed": unparsed}


def print_benchmark(report: dict) -> None:
    """The headline and one row per subtask / family."""
    fmt = (lambda v: f"{v:.2f}") if report["benchmark"] == "mme" else (lambda v: f"{v:.4f}")
    head = f"{report['benchmark']}: score {fmt(report['score'])} over {report['n']} questions"
    print(head + (f" ({report['missing']} without a prediction)" if report.get("missing") else ""))
    if report["benchmark"] == "mme":
        print(f"  perception {fmt(report['perception'])}  cognition {fmt(report['cognition'])}")
    rows = report.get("subtasks") or report.get("families") or {}
    if rows:
        cols = list(next(iter(rows.values())))
        print(f"  {'':<24}" + "".join(f"{c:>11}" for c in cols))
        for name, row in rows.items():
            cells = [str(v) if isinstance(v, int) else fmt(v) for v in row.values()]
            print(f"  {name:<24}" + "".join(f"{c:>11}" for c in cells))
