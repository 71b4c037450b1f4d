"""Data package: built-in real image sets, file readers, splits, group actions, QM9."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from raygram.data import HARTREE_TO_KCAL_PER_MOL, SOURCES, ImageDataset, load_images, load_qm9, qm9_folder, random_group_actions, split, standardize
from raygram.data import qm9 as qm9_module

# The header and four rows (GDB indices 1, 2, 4, 212) exactly as qm9pack 1.0.3 writes them:
# single-quoted element lists, numbers such as `0.` and `1.` (acetylene) and `2.1997E-6`.
QM9_HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,"
    "Harmonic_Freq_cmi,RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,"
    "LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,"
    "Enthalphy_298K_au,GibbsFreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K")
METHANE = (
    '"dsgdb9nsd_000001.xyz",1,"C","InChI=1S/CH4/h1H4",5,"[4,1,0,0,0]","[\'C\',\'H\',\'H\',\'H\',\'H\']",'
    '"[[-0.0126981359,1.0858041578,0.0080009958],[0.002150416,-0.0060313176,0.0019761204],'
    '[1.0117308433,1.4637511618,0.0002765748],[-0.540815069,1.4475266138,-0.8766437152],'
    '[-0.5238136345,1.4379326443,0.9063972942]]","[-0.535689,0.133921,0.133922,0.133923,0.133923]",'
    '"[1341.307,1341.3284,1341.365,1562.6731,1562.7453,3038.3205,3151.6034,3151.6788,3151.7078]",'
    '157.7118,157.70997,157.70699,0.,13.21,-0.3877,0.1171,0.5048,35.3641,0.044749,-40.47893,'
    '-40.476062,-40.475117,-40.498597,6.469')
AMMONIA = (
    '"dsgdb9nsd_000002.xyz",2,"N","InChI=1S/H3N/h1H3",4,"[3,0,1,0,0]","[\'N\',\'H\',\'H\',\'H\']",'
    '"[[-0.0404260543,1.0241077531,0.0625637998],[0.0172574639,0.0125452063,-0.0273771593],'
    '[0.9157893661,1.3587451948,-0.0287577581],[-0.5202777357,1.3435321258,-0.7755426124]]",'
    '"[-0.707143,0.235712,0.235712,0.23572]","[1103.8733,1684.1158,1684.3072,3458.7145,3575.2414,'
    '3575.3343]",293.60975,293.54111,191.39397,1.6256,9.46,-0.257,0.0829,0.3399,26.1563,0.034358,'
    '-56.525887,-56.523026,-56.522082,-56.544961,6.316')
ACETYLENE = (
    '"dsgdb9nsd_000004.xyz",4,"C#C","InChI=1S/C2H2/c1-2/h1-2H",4,"[2,2,0,0,0]",'
    '"[\'C\',\'C\',\'H\',\'H\']","[[0.5995394918,0.,1.],[-0.5995394918,0.,1.],[-1.6616385861,0.,1.],'
    '[1.6616385861,0.,1.]]","[-0.207019,-0.207019,0.207019,0.207019]","[549.7648,549.7648,795.2713,'
    '795.2713,2078.1131,3455.8096,3557.8599]",0.,35.6100361,35.6100361,0.,16.28,-0.2845,0.0506,'
    '0.3351,59.5248,0.026841,-77.308427,-77.305527,-77.304583,-77.327429,8.574')
METHYLPYRROLE = (
    '"dsgdb9nsd_000212.xyz",212,"CN1C=CC=C1","InChI=1S/C5H7N/c1-6-4-2-3-5-6/h2-5H,1H3",13,'
    '"[7,5,1,0,0]","[\'C\',\'N\',\'C\',\'C\',\'C\',\'C\',\'H\',\'H\',\'H\',\'H\',\'H\',\'H\',\'H\']",'
    '"[[2.1997E-6,1.4462618059,0.0098312216],[-0.0395853465,-0.0001481182,0.0022628164],'
    '[-0.0102031441,-0.7914294915,-1.1197711939],[0.0424480479,-2.1071237431,-0.7205292439],'
    '[0.051416093,-2.1148079393,0.7011850782],[0.0029673515,-0.8035395846,1.1152367693],'
    '[1.027926131,1.828132226,0.0028554018],[-0.5211791052,1.8337374247,-0.8690329378],'
    '[-0.5054481987,1.8237838058,0.9020802045],[-0.0304306812,-0.3464381728,-2.1023011685],'
    '[0.0571095205,-2.9656370805,-1.3743309873],[0.0741869784,-2.9803348886,1.3454340259],'
    '[-0.0055890963,-0.3691945839,2.1026885337]]","[-0.335446,0.039731,-0.096411,-0.16246,'
    '-0.162537,-0.0964,0.136776,0.139105,0.139122,0.108555,0.090693,0.090693,0.108578]",'
    '"[84.7872,189.0812,356.3627,619.1378]",8.71953,3.56689,2.57362,2.0318,55.54,-0.2006,0.0463,'
    '0.2469,510.1975,0.110002,-249.387499,-249.381908,-249.380963,-249.416542,20.193')
METHANE_XYZ = np.array([[-0.0126981359, 1.0858041578, 0.0080009958],
                        [0.002150416, -0.0060313176, 0.0019761204],
                        [1.0117308433, 1.4637511618, 0.0002765748],
                        [-0.540815069, 1.4475266138, -0.8766437152],
                        [-0.5238136345, 1.4379326443, 0.9063972942]])


# ---------------------------------------------------------------- built-in image sets

@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


def test_digits_shape_range_and_fingerprint(digits):
    assert digits.x.shape == (1797, 8, 8, 1) and digits.x.dtype == np.float64
    assert digits.labels.dtype == np.int64 and digits.classes == 10
    assert sorted(set(digits.labels.tolist())) == list(range(10))
    assert digits.x.min() == 0.0 and digits.x.max() == 1.0
    assert np.all(np.isin(digits.x * 16, np.arange(17)))  # scaled 0..16 counts, nothing else
    again = load_images("digits").fingerprint()
    assert again == digits.fingerprint()
    assert set(again) == {"name", "shape", "sha256"} and again["shape"] == [1797, 8, 8, 1]
    x = digits.x.copy()
    x[5, 3, 3, 0] += 1 / 16
    assert dataclasses.replace(digits, x=x).fingerprint()["sha256"] != again["sha256"]
    labels = digits.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    assert dataclasses.replace(digits, labels=labels).fingerprint()["sha256"] != again["sha256"]


def test_mnist_5000_real_digits():
    mnist = load_images("mnist")
    assert mnist.x.shape == (5000, 28, 28, 1) and mnist.classes == 10
    np.testing.assert_array_equal(np.bincount(mnist.labels), [500] * 10)
    assert mnist.x.min() == 0.0 and mnist.x.max() == 1.0
    assert np.all(np.isin(np.round(mnist.x * 255, 9), np.arange(256)))
    ink = mnist.x.mean(axis=(1, 2, 3))
    assert 0.05 < ink.mean() < 0.25 and ink.min() > 0  # real strokes, not blanks or noise


def test_import_is_light():
    code = ("import sys, raygram.data; "
            "print([m for m in ('jax', 'mlxtend', 'PIL', 'sklearn') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dataset_validates_its_fields():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got \[0, 2\]"):
        ImageDataset("bad", np.zeros((3, 2, 2, 1)), np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match=r"x must have shape \(N, H, W, C\), got \(3, 2, 2\)"):
        ImageDataset("bad", np.zeros((3, 2, 2)), np.array([0, 1, 0]), 2)


# ---------------------------------------------------------------- user files

def test_npz_uint8_and_float(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    y = np.array([0, 2, 1, 2, 0, 1])
    np.savez(tmp_path / "small.npz", x=pixels, y=y)
    ds = load_images("npz", tmp_path / "small.npz")
    assert ds.name == "small" and ds.classes == 3
    np.testing.assert_array_equal(ds.x, pixels[..., None] / 255.0)
    np.testing.assert_array_equal(ds.labels, y)

    images = rng.normal(size=(4, 3, 3, 2))
    np.savez(tmp_path / "f.npz", images=images, targets=np.array([[1], [0], [1], [4]], dtype=np.uint8))
    ds = load_images("npz", str(tmp_path / "f.npz"), x_key="images", y_key="targets")
    np.testing.assert_array_equal(ds.x, images)
    np.testing.assert_array_equal(ds.labels, [1, 0, 1, 4])
    assert ds.classes == 5


def _medmnist(path, seed=0):
    """A PathMNIST-shaped archive: 28×28×3 uint8 images, (n, 1) labels; test lacks class 8."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split_name, n, top in (("train", 9, 9), ("val", 4, 9), ("test", 5, 8)):
        arrays[f"{split_name}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split_name}_labels"] = rng.integers(0, top, (n, 1), dtype=np.uint8)
    arrays["train_labels"][0, 0] = 8
    np.savez_compressed(path, **arrays)
    return arrays


def test_medmnist_splits(tmp_path):
    arrays = _medmnist(tmp_path / "pathmnist.npz")
    ds = load_images("medmnist", tmp_path / "pathmnist.npz")
    assert ds.name == "pathmnist" and ds.x.shape == (18, 28, 28, 3) and ds.classes == 9
    order = ("train", "val", "test")
    np.testing.assert_array_equal(ds.x, np.concatenate([arrays[f"{s}_images"] for s in order]) / 255.0)
    np.testing.assert_array_equal(ds.labels, np.concatenate([arrays[f"{s}_labels"][:, 0] for s in order]))
    test = load_images("medmnist", tmp_path / "pathmnist.npz", split="test")
    assert test.name == "pathmnist-test" and test.classes == 9  # classes from all splits
    np.testing.assert_array_equal(test.x, arrays["test_images"] / 255.0)
    np.testing.assert_array_equal(test.labels, arrays["test_labels"][:, 0])


@pytest.fixture
def tree(tmp_path):
    """Class folders of RGB TIFFs, a grayscale TIFF, an upper-case .TIF, a PNG and a stray .txt."""
    rng = np.random.default_rng(1)
    root = tmp_path / "NCT-mini"
    files = {"adipose": ["a.tif", "b.tiff", "c.png"], "tumor": ["Z.TIF", "x.tif", "y.tif"]}
    arrays = {}
    for cls, names in files.items():
        (root / cls).mkdir(parents=True)
        (root / cls / "notes.txt").write_text("not an image")
        for name in names:
            if name == "y.tif":
                pixels = rng.integers(0, 256, (6, 6), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(root / cls / name)
                pixels = np.repeat(pixels[..., None], 3, axis=-1)
            else:
                pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
                Image.fromarray(pixels, mode="RGB").save(root / cls / name)
            arrays[cls, name] = pixels
    (root / ".hidden").mkdir()
    order = [("adipose", "a.tif"), ("adipose", "b.tiff"), ("adipose", "c.png"),
             ("tumor", "Z.TIF"), ("tumor", "x.tif"), ("tumor", "y.tif")]
    return root, np.stack([arrays[key] for key in order]), np.array([0, 0, 0, 1, 1, 1])


def test_image_folder_exact(tree):
    root, pixels, labels = tree
    ds = load_images("image_folder", root)
    assert ds.name == "NCT-mini" and ds.classes == 2 and ds.x.shape == (6, 6, 6, 3)
    np.testing.assert_array_equal(ds.x, pixels / 255.0)
    np.testing.assert_array_equal(ds.labels, labels)


def test_image_folder_grayscale_and_resize(tree):
    root, pixels, _ = tree
    gray = load_images("image_folder", root, grayscale=True)
    assert gray.x.shape == (6, 6, 6, 1)
    expected = [np.asarray(Image.fromarray(p).convert("L")) for p in pixels]
    np.testing.assert_array_equal(gray.x[..., 0], np.stack(expected) / 255.0)

    big = load_images("image_folder", root, size=4)
    assert big.x.shape == (6, 4, 4, 3)
    expected = [np.asarray(Image.fromarray(p).resize((4, 4), Image.Resampling.BILINEAR)) for p in pixels]
    np.testing.assert_array_equal(big.x, np.stack(expected) / 255.0)

    mixed = root.parent / "mixed"
    (mixed / "only").mkdir(parents=True)
    Image.fromarray(np.full((9, 7, 3), 200, np.uint8)).save(mixed / "only" / "p.png")
    Image.fromarray(np.full((5, 5, 3), 200, np.uint8)).save(mixed / "only" / "q.png")
    resized = load_images("image_folder", mixed, size=3)
    np.testing.assert_allclose(resized.x, 200 / 255.0, rtol=0, atol=0)  # constant stays constant


def test_image_folder_extensions(tree):
    root, pixels, _ = tree
    Image.fromarray(pixels[0]).save(root / "tumor" / "w.png")
    ds = load_images("image_folder", root, extensions=("PNG",))
    np.testing.assert_array_equal(ds.x, np.stack([pixels[2], pixels[0]]) / 255.0)
    np.testing.assert_array_equal(ds.labels, [0, 1])


# ---------------------------------------------------------------- loader errors

def test_source_option_and_path_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown image source 'cifar'; choose one of "
                                         r"digits, mnist, npz, medmnist, image_folder"):
        load_images("cifar")
    assert SOURCES == ("digits", "mnist", "npz", "medmnist", "image_folder")
    with pytest.raises(ValueError, match=r"unknown option\(s\) xkey for image source 'npz'; "
                                         r"it accepts x_key, y_key"):
        load_images("npz", tmp_path / "a.npz", xkey="x")
    with pytest.raises(ValueError, match=r"option\(s\) size for image source 'digits'; "
                                         r"it accepts no options"):
        load_images("digits", size=4)
    with pytest.raises(ValueError, match=r"'mnist' is built in and takes no path"):
        load_images("mnist", "somewhere")
    with pytest.raises(ValueError, match=r"'image_folder' needs a path"):
        load_images("image_folder")
    missing = tmp_path / "missing.npz"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_images("npz", missing)
    with pytest.raises(FileNotFoundError, match=r"no such file or folder"):
        load_images("image_folder", tmp_path / "no_folder")


def test_npz_content_errors(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((3, 4, 4)), targets=np.zeros(3, int))
    with pytest.raises(ValueError, match=r"no key\(s\) 'x', 'y'; keys present: 'images', 'targets'"):
        load_images("npz", path)
    np.savez(path, x=np.zeros((5, 4, 4), np.uint8), y=np.zeros(4, int))
    with pytest.raises(ValueError, match=r"5 images but 4 labels"):
        load_images("npz", path)
    x = np.zeros((4, 3, 3, 1))
    x[2, 1, 1, 0] = np.nan
    x[3, 0, 0, 0] = np.inf
    np.savez(path, x=x, y=np.zeros(4, int))
    with pytest.raises(ValueError, match=r"2 NaN or inf pixel\(s\), the first in image 2"):
        load_images("npz", path)
    np.savez(path, x=np.zeros((3, 3, 3)), y=np.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match=r"labels must be integers; label 1 is 0.5"):
        load_images("npz", path)
    np.savez(path, x=np.zeros((3, 3, 3)), y=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"labels must be integers, got dtype <U1"):
        load_images("npz", path)
    np.savez(path, x=np.zeros((3, 3, 3)), y=np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"labels must be >= 0; label 1 is -1"):
        load_images("npz", path)
    np.savez(path, x=np.zeros((3, 3, 3)), y=np.zeros((3, 14), int))
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) or \(N, 1\).*\(3, 14\)"):
        load_images("npz", path)
    np.savez(path, x=np.zeros((3, 3)), y=np.zeros(3, int))
    with pytest.raises(ValueError, match=r"images must have shape \(N, H, W\) or \(N, H, W, C\), "
                                         r"got \(3, 3\)"):
        load_images("npz", path)
    (tmp_path / "junk.npz").write_text("not numpy")
    with pytest.raises(ValueError, match=r"junk.npz' is not a readable .npz archive"):
        load_images("npz", tmp_path / "junk.npz")


def test_medmnist_errors(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1), int))
    with pytest.raises(ValueError, match=r"no key\(s\) 'val_images', 'val_labels', 'test_images', "
                                         r"'test_labels'; keys present: 'train_images', 'train_labels'"):
        load_images("medmnist", path)
    _medmnist(path)
    with pytest.raises(ValueError, match=r"split must be one of train, val, test, all; got 'valid'"):
        load_images("medmnist", path, split="valid")


def test_image_folder_errors(tree, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "stray.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'.*empty' has no class sub-folders"):
        load_images("image_folder", tmp_path / "empty")
    root, _, _ = tree
    with pytest.raises(ValueError, match=r"class folder '.*tumor' holds no images with extension .png"):
        load_images("image_folder", root, extensions=".png")
    Image.fromarray(np.zeros((8, 5, 3), np.uint8)).save(root / "tumor" / "zz.tif")
    with pytest.raises(ValueError, match=r"images differ in size: '.*a.tif' is 6x6 but '.*zz.tif' "
                                         r"is 5x8; pass size= to resize them"):
        load_images("image_folder", root)
    assert load_images("image_folder", root, size=6).x.shape == (7, 6, 6, 3)
    with pytest.raises(ValueError, match=r"size must be a positive int or None, got 0"):
        load_images("image_folder", root, size=0)
    (root / "tumor" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image '.*broken.png'"):
        load_images("image_folder", root, size=6)


# ---------------------------------------------------------------- split

def test_split_disjoint_deterministic_nested():
    train, test = split(100, 60, 25, seed=3)
    assert train.dtype == test.dtype == np.int64
    assert len(train) == 60 and len(test) == 25 and not set(train) & set(test)
    assert set(train) | set(test) <= set(range(100))
    assert np.all(np.diff(test) > 0) and not np.all(np.diff(train) > 0)
    again = split(100, 60, 25, seed=3)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(split(100, 60, 25, seed=4)[0], train)
    smaller, same_test = split(100, 20, 25, seed=3)
    np.testing.assert_array_equal(smaller, train[:20])  # nested sizes: prefixes of one order
    np.testing.assert_array_equal(same_test, test)
    train, test = split(10, 7, 3, seed=0)
    assert sorted([*train, *test]) == list(range(10))


def test_split_prefixes_are_uniform():
    n, trials, k = 10, 4000, 3
    counts = np.zeros(n)
    for seed in range(trials):
        train, _ = split(n, 6, 2, seed)
        counts[train[:k]] += 1
    expected = trials * k / n  # 1200, binomial sd ≈ 29
    assert np.all(np.abs(counts - expected) < 150), counts


def test_split_stratified():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    np.random.default_rng(0).shuffle(labels)
    train, test = split(100, 60, 10, seed=1, labels=labels)
    np.testing.assert_array_equal(np.bincount(labels[test], minlength=3), [5, 3, 2])
    assert len(train) == 60 and not set(train) & set(test)
    smaller, same_test = split(100, 30, 10, seed=1, labels=labels)
    np.testing.assert_array_equal(smaller, train[:30])
    np.testing.assert_array_equal(same_test, test)
    # class sizes 3: 2, 7: 7, 9: 1. test_size 3 -> quotas 0.6, 2.1, 0.3 -> floors 0, 2, 0 and the
    # leftover slot to the largest remainder (class 3); test_size 9 -> 1.8, 6.3, 0.9 -> 1, 6, 0 + 2.
    labels = np.array([7, 3, 7, 7, 9, 7, 7, 3, 7, 7])
    _, test = split(10, 5, 3, seed=0, labels=labels)
    assert sorted(labels[test].tolist()) == [3, 7, 7]
    _, test = split(10, 1, 9, seed=0, labels=labels)
    assert sorted(labels[test].tolist()) == [3, 3, 7, 7, 7, 7, 7, 7, 9]
    counts = {c: 0 for c in (3, 7, 9)}
    for seed in range(20):
        _, test = split(10, 5, 5, seed, labels=labels)
        for c in labels[test]:
            counts[int(c)] += 1
    assert counts == {3: 20, 7: 80, 9: 0}  # 1, 3.5, 0.5: the 0.5 tie goes to the smaller label 7


def test_split_errors():
    with pytest.raises(ValueError, match=r"must be >= 1, got train_size=0, test_size=5"):
        split(10, 0, 5, seed=0)
    with pytest.raises(ValueError, match=r"must be >= 1, got train_size=3, test_size=-1"):
        split(10, 3, -1, seed=0)
    with pytest.raises(ValueError, match=r"train_size \+ test_size = 60 \+ 50 = 110 exceeds the n=100"):
        split(100, 60, 50, seed=0)
    with pytest.raises(ValueError, match=r"labels must have shape \(n,\) = \(10,\), got \(9,\)"):
        split(10, 3, 3, seed=0, labels=np.zeros(9))


# ---------------------------------------------------------------- group actions, standardize

def _which(outputs, candidates):
    """Index of the candidate each output equals exactly (-1 if none)."""
    return [next((k for k, c in enumerate(cands) if np.array_equal(out, c)), -1)
            for out, cands in zip(outputs, candidates)]


def test_random_c4_actions_are_rotations():
    x = np.random.default_rng(0).normal(size=(64, 5, 5, 2))
    out = random_group_actions(x, "C4", seed=7)
    assert out.shape == x.shape and out.dtype == x.dtype
    which = _which(out, [[np.rot90(img, k, axes=(0, 1)) for k in range(4)] for img in x])
    assert -1 not in which and set(which) == {0, 1, 2, 3}
    np.testing.assert_array_equal(random_group_actions(x, "C4", seed=7), out)
    assert not np.array_equal(random_group_actions(x, "C4", seed=8), out)


def test_random_d4_actions_on_digits(digits):
    x = digits.x[:200]
    out = random_group_actions(x, "D4", seed=0)
    cands = [[np.rot90(img, k, axes=(0, 1)) for k in range(4)]
             + [np.fliplr(np.rot90(img, k, axes=(0, 1))) for k in range(4)] for img in x]
    which = _which(out, cands)
    assert -1 not in which and set(which) == set(range(8))
    with pytest.raises(ValueError, match=r"only when it is square.*\(5, 4\)"):
        random_group_actions(np.zeros((2, 5, 4, 1)), "C4", seed=0)


def test_standardize():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, size=(50, 4, 4, 3))
    train[..., 2] = 5.0  # a constant channel
    test = rng.normal(size=(7, 4, 4, 3))
    s_train, s_test = standardize(train, test)
    np.testing.assert_allclose(s_train[..., :2].mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(s_train[..., :2].std(axis=(0, 1, 2)), 1, atol=1e-12)
    np.testing.assert_array_equal(s_train[..., 2], 0.0)
    mean, std = train.mean(axis=(0, 1, 2)), train.std(axis=(0, 1, 2))
    np.testing.assert_allclose(s_test[..., :2], (test[..., :2] - mean[:2]) / std[:2], rtol=1e-14)
    np.testing.assert_array_equal(s_test[..., 2], test[..., 2] - 5.0)
    with pytest.raises(ValueError, match=r"array 1 has 1 channel\(s\) \(shape \(2, 4, 4, 1\)\); "
                                         r"x_train has 3"):
        standardize(train, np.zeros((2, 4, 4, 1)))


# ---------------------------------------------------------------- QM9

def _qm9_files(folder, rows=(METHANE, AMMONIA, ACETYLENE, METHYLPYRROLE)):
    """qm9_part1..3.csv with rows split 2/1/rest, in qm9pack's exact format."""
    folder.mkdir(exist_ok=True)
    parts = [rows[:2], rows[2:3], rows[3:]]
    for i, part in enumerate(parts, 1):
        (folder / f"qm9_part{i}.csv").write_text("\n".join([QM9_HEADER, *part]) + "\n")
    return folder


def test_qm9_csv_format(tmp_path):
    folder = _qm9_files(tmp_path / "qm9")
    mols = load_qm9(folder=folder)
    assert [m.index for m in mols] == [1, 2, 4, 212]
    methane, ammonia, acetylene, pyrrole = mols
    assert methane.elements == ("C", "H", "H", "H", "H") and methane.u0 == -40.47893
    np.testing.assert_array_equal(methane.positions, METHANE_XYZ)
    assert ammonia.elements == ("N", "H", "H", "H") and ammonia.u0 == -56.525887
    np.testing.assert_array_equal(acetylene.positions[:, 1:], [[0.0, 1.0]] * 4)  # the `0.`, `1.`
    assert acetylene.positions[0, 0] == 0.5995394918
    assert pyrrole.positions.shape == (13, 3) and pyrrole.positions[0, 0] == 2.1997e-6
    assert "".join(pyrrole.elements) == "CNCCCCHHHHHHH"
    assert [m.index for m in load_qm9(limit=3, folder=folder)] == [1, 2, 4]
    assert load_qm9(limit=0, folder=folder) == []
    bonds = np.linalg.norm(methane.positions[1:] - methane.positions[0], axis=1)
    np.testing.assert_allclose(bonds, 1.0919, atol=2e-4)  # C-H bond of methane, Angstrom


@pytest.mark.parametrize("old, new, column", [
    ("\"['C','H','H','H','H']\"", "\"['C','H','H','H','H'\"", "Elements"),
    ("\"['C','H','H','H','H']\"", "\"['C','H','H','H']\"", "Elements"),
    ("[-0.5238136345,1.4379326443,0.9063972942]]", "[-0.5238136345,1.4379326443]]", "XYZ_Ang"),
    ("0.0080009958]", "0.00800x9958]", "XYZ_Ang"),
    ("0.044749,-40.47893,", "0.044749,n/a,", "InternalEnergy_0K_au"),
    ("\"dsgdb9nsd_000001.xyz\",1,", "\"dsgdb9nsd_000001.xyz\",one,", "Index"),
])
def test_qm9_malformed_rows(tmp_path, old, new, column):
    assert old in METHANE
    folder = _qm9_files(tmp_path / "qm9", (AMMONIA, METHANE.replace(old, new), ACETYLENE))
    with pytest.raises(ValueError, match=rf"qm9_part1.csv line 3 \(Index .*\), column '{column}'"):
        load_qm9(folder=folder)


def test_qm9_file_errors(tmp_path, monkeypatch):
    folder = _qm9_files(tmp_path / "qm9")
    (folder / "qm9_part3.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"QM9 file\(s\) not found: .*qm9_part3.csv"):
        load_qm9(folder=folder)
    (folder / "qm9_part3.csv").write_text("Index,SMILES\n1,C\n")
    with pytest.raises(ValueError, match=r"qm9_part3.csv: no column\(s\) N_atoms, Elements, XYZ_Ang, "
                                         r"InternalEnergy_0K_au"):
        load_qm9(folder=folder)
    with pytest.raises(ValueError, match=r"limit must be a non-negative int or None, got -1"):
        load_qm9(limit=-1, folder=folder)
    monkeypatch.setattr(qm9_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install qm9pack"):
        qm9_folder()


@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="qm9pack is not installed")
def test_qm9_real_molecules():
    assert {"qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"} <= {p.name for p in qm9_folder().iterdir()}
    mols = load_qm9(limit=100)
    assert len(mols) == 100 and [m.index for m in mols[:3]] == [1, 2, 3]
    methane = mols[0]
    assert methane.elements == ("C", "H", "H", "H", "H") and methane.u0 == -40.47893
    np.testing.assert_array_equal(methane.positions, METHANE_XYZ)
    assert methane.u0 * HARTREE_TO_KCAL_PER_MOL == pytest.approx(-25400.912, abs=1e-3)
    assert all(m.positions.shape == (len(m.elements), 3) for m in mols)
    assert all(set(m.elements) <= {"H", "C", "N", "O", "F"} and len(m.elements) <= 29 for m in mols)
    # U0 is roughly additive in atoms: heavier molecules have lower energy.
    heavy = np.array([sum(e != "H" for e in m.elements) for m in mols])
    u0 = np.array([m.u0 for m in mols])
    assert np.corrcoef(heavy, u0)[0, 1] < -0.9
