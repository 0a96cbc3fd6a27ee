"""`finetune export --format onnx --int8`: a real static INT8 (QDQ) model onnxruntime loads, calibrated on the
checkpoint's validation images or a folder, checked by agreement and accuracy, with the speed-up printed."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
from conftest import invoke as cli
from conftest import make_image, train_tiny

from finetune.deploy.export import export
from finetune.deploy.predict import predict
from finetune.errors import ExportError

pytestmark = pytest.mark.slow  # every test here trains, or reads a fixture that does


@pytest.fixture(autouse=True)
def _untuned(monkeypatch):
    import finetune.runtime.process

    monkeypatch.setattr(finetune.runtime.process, "tune_process", lambda imports=(): None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("int8"))


def test_int8_export_is_quantized_loads_in_onnxruntime_and_says_agreement_accuracy_and_speed(trained):
    best, data = trained
    code, out, err = cli("export", best, "--format", "onnx", "--int8", "--max-accuracy-drop", "100")
    assert code == 0, err
    path = best.with_suffix(".int8.onnx")
    assert out.strip().splitlines()[-1] == str(path) and path.is_file()
    assert "int8: top-1 agreement with fp32" in err and "on 8 images (the validation split of" in err
    assert "int8: top-1 accuracy fp32 1.000 -> int8" in err and "8 labelled images" in err
    assert "images/s, int8" in err and "x)" in err

    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 5  # the conv weights are stored as INT8

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    info = json.loads(meta["finetune"])
    assert json.loads(meta["class_names"]) == ["blue", "red"] and info["quantization"]["format"] == "QDQ"
    check = info["quantization"]["check"]
    assert check["images"] == check["labelled"] == 8 and 0 <= check["agreement"] <= 1
    assert check["accuracy_fp32"] == 1.0 and check["int8_images_per_s"] > 0 and check["speedup"] > 0
    logits = session.run(["logits"], {"images": np.zeros((5, 3, 32, 32), np.float32)})[0]
    assert logits.shape == (5, 2)  # the batch axis stays dynamic

    results = predict(path, sorted((data / "val").rglob("*.png")))  # predict runs it (engine auto)
    assert sum(r.top[0].label == r.path.split("/")[-2] for r in results) >= 7


def test_calibration_folder_without_labels_and_the_accuracy_gate(trained, tmp_path):
    best, data = trained
    loose = tmp_path / "loose"
    for i, p in enumerate(sorted((data / "val").rglob("*.png"))):
        loose.mkdir(exist_ok=True)
        shutil.copy(p, loose / f"{i}.png")
    (loose / "broken.png").write_bytes(b"not an image")
    result = export(best, "onnx", tmp_path / "m.int8.onnx", int8=True, calibration=loose)
    assert result.int8.images == 8 and result.int8.unreadable == 1 and result.int8.labelled == 0
    assert result.int8.accuracy_fp32 is None and result.int8.source == str(loose)

    # an INT8 model that loses more accuracy than allowed is not kept (here: asked to gain a point)
    with pytest.raises(ExportError, match=r"points lost, more than --max-accuracy-drop -1\); nothing was kept"):
        export(best, "onnx", tmp_path / "gate.int8.onnx", int8=True, max_drop=-1)
    assert not (tmp_path / "gate.int8.onnx").exists()


def test_int8_refusals_are_one_line(trained, tmp_path):
    best, data = trained
    for args, words in [(["--format", "torchscript", "--int8"], "use --format onnx, not torchscript"),
                        (["--format", "onnx", "--calibration", data], "add --int8"),
                        (["--format", "onnx", "--int8", "--calibration", tmp_path / "nowhere"], "is not a folder"),
                        (["--format", "onnx", "--int8", "--output", best], "is a finetune checkpoint"),
                        (["--format", "onnx", "--int8", "--calibration", tmp_path, "--output", tmp_path / "m.onnx"],
                         "inside the dataset")]:
        code, _, err = cli("export", best, *args)
        assert code == 1 and "Traceback" not in err, err
        assert words in err.strip().splitlines()[-1], (words, err)
    # a checkpoint whose validation images are gone says how to calibrate instead, before any work
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    shutil.rmtree(data)
    try:
        code, _, err = cli("export", best, "--format", "onnx", "--int8")
        assert code == 1 and "is not a folder here; give --calibration DIR" in err.strip().splitlines()[-1]
    finally:
        shutil.copytree(moved, data)
    make_image(tmp_path / "empty" / "x.txt", (0, 0, 0), fmt="PNG")
    with pytest.raises(ExportError, match="holds no images"):
        export(best, "onnx", tmp_path / "e.int8.onnx", int8=True, calibration=tmp_path / "empty")
