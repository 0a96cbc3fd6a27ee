"""report.html: one self-contained page with every section, readable in a real browser (headless Chromium)."""

import re
import shutil
import subprocess

import pytest

from finetune.config import build_recipe
from finetune.deploy.evaluate import evaluate
from finetune.deploy.report import write_report
from finetune.train.loop import fit

pytestmark = pytest.mark.slow  # every test here trains, or reads a fixture that does

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
CHECK = """<script>
addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.setAttribute("data-images", broken + "/" + images.length);
});
</script></body>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from conftest import make_folder

    tmp = tmp_path_factory.mktemp("report")
    root = make_folder(tmp / "colors", {"train": 8, "val": 4})
    tree = {"model": {"source": "timm", "name": "test_efficientnet", "weights": None},
            "data": {"root": str(root), "image_size": 32, "augment": "none", "workers": 0},
            "strategy": {"name": "feature-extract", "lr": {"head": 0.01}},
            "train": {"epochs": 2, "batch_size": 8}, "run": {"output": str(tmp / "run")}}
    run = fit(build_recipe(tree))
    swapped = tmp / "swapped"  # blue named red and red named blue: every image a mistake, for the gallery
    for src, dst in (("blue", "red"), ("red", "blue")):
        shutil.copytree(root / "val" / src, swapped / dst)
    evaluate(run / "best.pt", swapped, output=run / "eval-best-swapped")
    return write_report(run), root


def test_the_page_holds_every_section_and_inlines_every_image(report):
    path, root = report
    page = path.read_text(encoding="utf-8")
    for section in ("summary", "data", "training", "calibration", "evaluation"):
        assert f'<section id="{section}">' in page, section
    assert "http://" not in page and "https://" not in page and "<script" not in page  # no network, no JS
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) >= 8 and all(s.startswith("data:image/") for s in sources)
    assert "Most confident mistakes" in page and "Per class" in page and "reliability" in page


@pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome here: install Debian's chromium (.ci/run does) "
                                            "to check the page in a real browser")
def test_a_real_browser_renders_it_without_errors_on_a_phone_screen(report, tmp_path):
    path, _ = report
    copy = tmp_path / "report.html"  # the page plus a probe of the images, for this test only
    copy.write_text(path.read_text(encoding="utf-8").replace("</body>", CHECK), encoding="utf-8")
    flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=390,2400"]
    dom = subprocess.run([*flags, "--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert images and images.group(1) == "0" and int(images.group(2)) >= 8, images  # every image decoded
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    shot = subprocess.run([*flags, "--hide-scrollbars", f"--screenshot={tmp_path / 'phone.png'}", path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and (tmp_path / "phone.png").stat().st_size > 20_000
