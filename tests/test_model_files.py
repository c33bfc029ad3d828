"""The user's own classifier file (onnx:PATH, torchscript:PATH) explained from the CLI.

The tests write the files: a small torch CNN that only looks at one region of its 32 x 32 input,
exported with torch.onnx.export and saved as TorchScript. Its saliency must land in that region.
"""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from blackbox.adapters.model_files import load_labels, load_model_file  # noqa: E402
from blackbox.adapters.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing  # noqa: E402
from blackbox.cli.main import main  # noqa: E402
from blackbox.errors import InputError, ModelError  # noqa: E402

SIZE = 32
LABELS = ["cat", "dog", "bird"]


class RegionNet(torch.nn.Module):
    """Class scores from the pixels of one region only: conv features outside it are zeroed."""

    def __init__(self, rows, cols, classes=3, seed=0, softmax=False):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, classes)
        with torch.no_grad():
            self.fc.weight.mul_(20.0)  # decisive scores, so the region matters a lot
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[..., rows[0]:rows[1], cols[0]:cols[1]] = 1.0
        self.register_buffer("mask", mask)
        self.softmax = softmax

    def forward(self, x):
        h = torch.relu(self.conv(x)) * self.mask
        logits = self.fc(h.sum(dim=(2, 3)) / self.mask.sum())
        return torch.softmax(logits, dim=1) if self.softmax else logits


def export_onnx(module, path, example):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, input_names=["pixels"],
                          output_names=["scores"], dynamic_axes={"pixels": {0: "batch"}, "scores": {0: "batch"}})
    return path


def save_torchscript(module, path, example):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(module.eval(), example).save(str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, coffee_original):
    from PIL import Image

    folder = tmp_path_factory.mktemp("model_files")
    example = torch.zeros(1, 3, SIZE, SIZE)
    top_right = RegionNet((4, 12), (20, 28))        # cells (1..2, 5..6) of an 8 x 8 grid
    bottom_left = RegionNet((20, 28), (4, 12), seed=1)
    image = folder / "photo.png"                     # 128 x 128: 4 px per model pixel when stretched
    Image.fromarray(coffee_original).resize((128, 128), Image.BICUBIC).save(image)
    labels_txt = folder / "labels.txt"
    labels_txt.write_text("\n".join(LABELS) + "\n")
    labels_json = folder / "labels.json"
    labels_json.write_text(json.dumps(LABELS))
    return {"onnx": export_onnx(top_right, folder / "top_right.onnx", example), "onnx_module": top_right,
            "torchscript": save_torchscript(bottom_left, folder / "bottom_left.pt", example),
            "ts_module": bottom_left, "image": image, "labels_txt": labels_txt, "labels_json": labels_json,
            "folder": folder}


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def region_contrast(saliency_map, rows, cols):
    """Whether the map's peak is in a region (given in model pixels, 4 image px each), and the mean
    absolute map inside it over the mean outside."""
    m = np.abs(saliency_map)
    inside = np.zeros(m.shape, dtype=bool)
    inside[rows[0] * 4:rows[1] * 4, cols[0] * 4:cols[1] * 4] = True
    peak = inside.flat[np.argmax(m)]
    return bool(peak), float(m[inside].mean() / m[~inside].mean())


@pytest.mark.parametrize("kind,labels,rows,cols,extra", [
    ("onnx", "labels_txt", (4, 12), (20, 28), []),                              # the file gives its size
    ("torchscript", "labels_json", (20, 28), (4, 12), ["--input-size", SIZE]),  # the user does
])
def test_own_model_file_is_explained_from_the_cli_with_its_labels(files, tmp_path, capsys, kind, labels, rows, cols,
                                                                  extra):
    saved = tmp_path / "map.npy"
    code, out, err = run_cli(capsys, "saliency", files["image"], "--model", f"{kind}:{files[kind]}", *extra,
                             "--labels", files[labels], "--resize", "stretch", "--target", "dog",
                             "--queries", 600, "--grid", 8, "--json", "--no-progress", "--save-map", saved)
    assert code == 0, err
    report = json.loads(out)
    assert report["target_label"] == "dog" and report["target_index"] == 1
    assert {t["label"] for t in report["top5"]} == set(LABELS)
    assert report["queries_used"] == 600
    saliency_map = np.load(saved)
    assert saliency_map.shape == (128, 128)
    # the region is 1/16 of the image and the model looks nowhere else: the map peaks there
    peak_inside, contrast = region_contrast(saliency_map, rows, cols)
    assert peak_inside and contrast > 4, contrast


def test_scores_match_the_torch_module_through_the_default_preprocessing(files):
    rng = np.random.default_rng(0)
    images = rng.random((5, SIZE, SIZE, 3)).astype(np.float32)
    x = (torch.from_numpy(images) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for kind, module in (("onnx", files["onnx_module"]), ("torchscript", files["ts_module"])):
        model = load_model_file(f"{kind}:{files[kind]}", labels=files["labels_txt"], resize="stretch", input_size=SIZE)
        with torch.no_grad():
            expected = torch.log_softmax(module(x.permute(0, 3, 1, 2)), dim=1).numpy()
        assert model.labels == LABELS and model.file_info["outputs"] == "logits"
        np.testing.assert_allclose(model.log_probs(images), expected, atol=1e-4)
    # the ONNX graph fixes 32 x 32, the TorchScript file cannot say: the user gives it
    assert load_model_file(f"onnx:{files['onnx']}").preprocessing.size == (SIZE, SIZE)
    with pytest.raises(ModelError, match="rejected a 1x3x224x224 nchw rgb input"):
        load_model_file(f"torchscript:{files['torchscript']}")


def test_grey_channels_last_probabilities_are_read_from_the_onnx_file(files):
    class GreyNHWC(torch.nn.Module):  # a Keras-style model: (n, 28, 28, 1) in, probabilities out
        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.fc = torch.nn.Linear(28 * 28, 4)

        def forward(self, x):  # the export traces len(x) as 1: the file only takes one image per call
            return torch.softmax(self.fc(x.reshape(len(x), -1)), dim=1)

    module = GreyNHWC()
    path = export_onnx(module, files["folder"] / "grey.onnx", torch.zeros(1, 28, 28, 1))
    model = load_model_file(f"onnx:{path}", resize="stretch")
    prep = model.preprocessing
    assert (prep.layout, prep.channels, prep.size, prep.mean, prep.std) == ("nhwc", "gray", (28, 28), (0.0,), (1.0,))
    assert model.file_info["outputs"] == "probs" and model.labels == ["0", "1", "2", "3"]
    assert model.batch_size == 1
    images = np.random.default_rng(1).random((3, 28, 28, 3)).astype(np.float32)
    grey = images @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)
    with torch.no_grad():
        expected = torch.log(module(torch.from_numpy(grey))).numpy()
    np.testing.assert_allclose(model.log_probs(images), expected, atol=1e-5)


def test_preprocessing_views_and_tensors():
    square = Preprocessing((224, 224))
    from blackbox.images import ImageView

    assert square.view(400, 600) == ImageView.center_crop(400, 600, 224, 224 / 256)
    wide = Preprocessing((100, 200), crop_fraction=1.0).view(400, 400)
    assert wide.box == (100, 0, 200, 400) and wide.size == (100, 200)
    assert Preprocessing((32, 32), resize="stretch").view(50, 70).box == (0, 0, 50, 70)
    caffe = Preprocessing((2, 2), mean=(103.9, 116.8, 123.7), std=(1,), pixel_range=255, channels="bgr", layout="nhwc")
    x = np.zeros((1, 2, 2, 3), np.float32)
    x[..., 0] = 1.0  # pure red
    np.testing.assert_allclose(caffe.to_input(x)[0, 0, 0], [-103.9, -116.8, 255 - 123.7], rtol=1e-6)
    assert Preprocessing((2, 2)).to_input(x).shape == (1, 3, 2, 2)
    with pytest.raises(InputError, match="mean needs 1 or 3 values"):
        Preprocessing(mean=(0.5, 0.5))
    assert Preprocessing(mean=127, std=128).mean == (127.0,) * 3  # one number, as the CLI's --mean 127
    with pytest.raises(InputError, match="std must be a number"):
        Preprocessing(std="wide")
    with pytest.raises(InputError, match="std must not be 0"):
        Preprocessing(std=(0,))


def test_labels_files(tmp_path):
    def write(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    assert load_labels(write("a.txt", "tench\ngoldfish\n\n")) == ["tench", "goldfish"]
    assert load_labels(write("b.json", '{"1": "goldfish", "0": "tench"}')) == ["tench", "goldfish"]
    for name, text, message in (("c.txt", "", "is empty"), ("d.txt", "a\n\nb", "label 2 is empty"),
                                ("e.json", "[1, {}]", "JSON list of names"),
                                ("f.json", '{"0": "a", "2": "b"}', "without gaps"),
                                ("g.json", "[oops", "not valid JSON")):
        with pytest.raises(InputError, match=message):
            load_labels(write(name, text))
    with pytest.raises(InputError, match="labels file not found"):
        load_labels(tmp_path / "missing.txt")


def test_clear_one_line_errors(files, tmp_path, capsys, monkeypatch):
    image, onnx_path, ts_path = files["image"], files["onnx"], files["torchscript"]
    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"not a model" * 50)
    pickled = tmp_path / "pickled.pt"
    torch.save(files["ts_module"].state_dict(), pickled)
    nine = tmp_path / "nine.txt"
    nine.write_text("\n".join(f"c{i}" for i in range(9)))
    cases = [
        (["--model", f"onnx:{tmp_path / 'nope.onnx'}"], "ONNX model file not found"),
        (["--model", f"onnx:{garbage}"], "cannot load ONNX model"),
        (["--model", f"torchscript:{garbage}"], "cannot load TorchScript model"),
        (["--model", f"torchscript:{pickled}", "--input-size", 32], "cannot load TorchScript model"),
        (["--model", f"onnx:{onnx_path}", "--labels", nine], "has 9 labels but the model outputs 3 scores"),
        (["--model", f"onnx:{onnx_path}", "--input-size", 20], "the model takes 32x32 input"),
        (["--model", f"onnx:{onnx_path}", "--channels", "gray"], "does not fit the model's input"),
        (["--model", f"torchscript:{ts_path}", "--input-size", 32, "--channels", "gray"], "expected input"),
        (["--model", "efficientnet-lite0", "--labels", nine], "--labels applies to your own model files"),
        (["--model", f"onnx:{onnx_path}", "--input-size", "3x4x5"], "expected S or HEIGHTxWIDTH"),
    ]
    for extra, message in cases:
        try:
            code, out, err = run_cli(capsys, "saliency", image, "--queries", 8, "--no-progress", *extra)
        except SystemExit as exc:  # argparse's own usage errors
            code, err = exc.code, capsys.readouterr().err
        assert code == 2, (extra, err)
        assert message in err, (extra, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    code, _, err = run_cli(capsys, "saliency", image, "--model", f"onnx:{onnx_path}", "--queries", 8)
    assert code == 2 and "onnxruntime is needed for ONNX models" in err and "blackbox-lr[local]" in err
