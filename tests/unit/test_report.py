"""`grpokit report`: the page of a tiny run's folder, run comparison, eval files, bad input, and
the page as a browser shows it."""

import json
import os
import shutil
from pathlib import Path

import pytest

from grpokit.cli import main
from grpokit.errors import UserError
from grpokit.report import write_report
from grpokit.report.load import label_runs, load_run
from grpokit.report.plots import PANELS, derive, figure

TINY = [
    "train.steps=3", "rollout.prompts_per_step=2", "rollout.group_size=4",
    "rollout.max_new_tokens=10", "eval.num_prompts=3", "data.max_prompt_length=1024",
    "train.micro_batch_size=4", "log.samples_every=1", "train.lr=1e-3", "log.report_to=[]",
    "data.task_args={digits: 1, ops: '+', train_size: 20, eval_size: 8, style: short}",
]


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory):
    """A GRPO run and a Dr. GRPO run of the tiny model, each with the report it wrote."""
    root = tmp_path_factory.mktemp("runs")
    for name, preset in (("grpo", "grpo"), ("dr", "dr_grpo")):
        assert main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={root / name}",
                     f"algo.preset={preset}", *TINY]) == 0
    return root / "grpo", root / "dr"


def test_train_writes_a_self_contained_report_with_plots_and_samples(two_runs):
    run = two_runs[0]
    html = (run / "report.html").read_text()
    pngs = sorted(p.stem for p in (run / "report").glob("*.png"))
    for slug in ("reward", "held_out", "length", "truncated", "kl", "entropy", "clip", "tied",
                 "grad_norm", "lr", "step_time", "throughput"):
        assert slug in pngs, slug
    assert html.count('src="data:image/png;base64,') == len(pngs)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count('<table class="samples">') == 3  # held-out before/after, steps 1 and 3
    assert "<h3>step 1</h3>" in html and "<h3>step 3</h3>" in html
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["completion"][:20].replace("<", "&lt;").replace(">", "&gt;") in html
    assert "pass@1" in html and "resolved config" in html


def test_two_runs_overlay_their_curves_and_list_the_settings_that_differ(two_runs, tmp_path):
    out = write_report(list(two_runs), tmp_path / "cmp.html")
    html = out.read_text()
    assert (tmp_path / "cmp" / "reward.png").is_file()
    differ = html.split("<h2>Settings that differ</h2>")[1].split("<h2>")[0]
    assert "algo.preset" in differ and "dr_grpo" in differ and "log.output_dir" not in differ
    assert "model.path" not in differ  # the same in both runs
    runs = [load_run(p) for p in two_runs]
    label_runs(runs)
    for run in runs:
        derive(run)
    panel = next(p for p in PANELS if p.slug == "entropy")
    fig = figure(panel, runs, panel.series(runs[0].keys()))
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["grpo", "dr"]
    colours = {line.get_color() for line in ax.get_lines()}
    assert len(colours) == 2


def test_derive_puts_the_held_out_results_at_step_0_and_the_last_step(two_runs):
    run = load_run(two_runs[0])
    derive(run)
    steps, values = run.series("eval/pass@1")
    assert steps == [0, 3]
    saved = json.loads((two_runs[0] / "eval.json").read_text())
    assert values == [saved["before"]["pass@1"], saved["after"]["pass@1"]]
    steps, train_time = run.series("perf/train_time_s")
    _, step_time = run.series("perf/step_time_s")
    _, gen_time = run.series("perf/gen_time_s")
    assert train_time == [s - g for s, g in zip(step_time, gen_time)]


def test_eval_jsonl_holds_every_prompt_and_a_summary_the_report_reads(tiny_model_dir, tmp_path):
    jsonl = tmp_path / "eval.jsonl"
    assert main(["eval", f"model.path={tiny_model_dir}", "eval.num_prompts=3",
                 "eval.samples_per_prompt=4", "eval.k=[1,2]", "eval.temperature=1.0", "rollout.max_new_tokens=8",
                 "data.task_args={digits: 1, ops: '+', train_size: 20, eval_size: 8, style: short}",
                 "--jsonl", str(jsonl)]) == 0
    records = [json.loads(x) for x in jsonl.read_text().splitlines()]
    prompts = [r for r in records if r["kind"] == "prompt"]
    assert [p["index"] for p in prompts] == [0, 1, 2]
    assert all(len(p["completions"]) == 4 and len(p["rewards"]["math"]) == 4 for p in prompts)
    summary = records[-1]["summary"]
    assert records[-1]["kind"] == "summary" and "pass@2_ci95" in summary
    correct = [sum(p["correct"]) for p in prompts]
    assert summary["pass@1"] == pytest.approx(sum(c / 4 for c in correct) / 3)
    html = write_report([jsonl], tmp_path / "eval.html").read_text()
    assert "<h2>Evaluation: eval</h2>" in html and html.count("<tr>") > 5


def test_bad_input_names_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="no metrics.jsonl"):
        write_report([tmp_path])
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\nnot json\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not valid JSON"):
        write_report([tmp_path])
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: expected a JSON object"):
        write_report([tmp_path])
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_a_live_run_is_reported_up_to_its_last_complete_line(tmp_path, capsys):
    done = '{"step": 1, "reward/mean": 0.5}\n{"step": 2, "reward/mean": 0.75}\n'
    (tmp_path / "metrics.jsonl").write_text(done + '{"step": 3, "reward/me')
    (tmp_path / "samples.jsonl").write_text('{"step": 1, "completion": "4"}\n{"step": 2, "com')
    assert main(["report", str(tmp_path)]) == 0
    assert "report.html" in capsys.readouterr().out
    run = load_run(tmp_path)
    assert run.series("reward/mean") == ([1, 2], [0.5, 0.75]) and len(run.samples) == 1
    # Ended by its newline, the same line is damage, not a write in progress.
    (tmp_path / "metrics.jsonl").write_text(done + '{"step": 3, "reward/me\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:3: not valid JSON"):
        load_run(tmp_path)


def _chromium() -> str | None:
    return os.environ.get("GRPOKIT_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium (scripts/setup.sh installs Debian's "
                                                "chromium when run as root)")
def test_a_browser_shows_every_plot_and_the_samples_offline(two_runs, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    out = write_report(list(two_runs), tmp_path / "both.html")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(out.as_uri())
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, "
                               "i.naturalWidth, i.naturalHeight])")
        rows = page.evaluate("document.querySelectorAll('table.samples tbody tr').length")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(images) == len(list((tmp_path / "both").glob("*.png"))) >= 12
    assert all(done and w > 600 and h > 300 for _, done, w, h in images), images
    assert rows >= 8
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert shot.stat().st_size > 100_000
    keep = os.environ.get("GRPOKIT_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "report.png")
