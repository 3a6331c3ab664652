"""The datasets we pre-train and evaluate on, as tfds builders over prepared data.

Nothing is downloaded at run time: a run that starts on a machine without the data
fails at once with the command that prepares it, instead of hours into a job. The one
exception is Fashion-MNIST, which is prepared offline from Debian's package.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from ssljax.data import fashion_mnist
from ssljax.errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the pipeline and the evaluations need to know about a dataset.

    `memory_split` is the labelled training split (k-NN memory, linear-probe training).
    `eval_resize` is the centre-crop fraction of evaluation images: the shorter side is
    resized to S / eval_resize, then the centre S×S kept (0.875 on ImageNet; 1.0 on
    small square images is a plain resize). `mask_key` names a ground-truth segmentation
    of each image (DetCon's `masks.kind='ground_truth'`), None where there is none.
    """

    name: str
    tfds_name: str
    train_split: str
    memory_split: str
    test_split: str
    num_classes: int | None
    image_key: str = "image"
    label_key: str | None = "label"
    num_train_examples: int = 0
    eval_resize: float = 1.0
    mask_key: str | None = None


DATASETS: dict[str, DatasetInfo] = {
    "imagenet2012": DatasetInfo(
        "imagenet2012", "imagenet2012", "train", "train", "validation", 1000, eval_resize=0.875
    ),
    "cifar10": DatasetInfo("cifar10", "cifar10", "train", "train", "test", 10),
    "stl10": DatasetInfo("stl10", "stl10", "unlabelled+train", "train", "test", 10),
    "fashion_mnist": DatasetInfo("fashion_mnist", "fashion_mnist", "train", "train", "test", 10),
    # COCO pre-training (DetCon §4.2) has no image labels; its evaluations are detection
    # transfer, outside this library. The panoptic variant adds ground-truth segments.
    "coco": DatasetInfo("coco", "coco/2017", "train", "train", "validation", None, label_key=None),
    "coco_panoptic": DatasetInfo(
        "coco_panoptic",
        "coco/2017_panoptic",
        "train",
        "train",
        "validation",
        None,
        label_key=None,
        mask_key="panoptic_image",
    ),
}


def _how_to_prepare(info: DatasetInfo, data_dir: str) -> str:
    if info.tfds_name == "imagenet2012":
        return (
            "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
            f"https://image-net.org into {data_dir}/downloads/manual, then run "
            f"`tfds build imagenet2012 --data_dir={data_dir}`"
        )
    if info.tfds_name.startswith("coco/"):
        return (
            f"run `tfds build {info.tfds_name} --data_dir={data_dir}` on a machine with network "
            "access (it downloads the 2017 images and annotations from cocodataset.org, "
            f"~20 GB) and copy {data_dir}/coco here"
        )
    if info.tfds_name == "fashion_mnist":
        return (
            "run `apt-get install dataset-fashion-mnist` (then it is prepared automatically), "
            f"or `tfds build fashion_mnist --data_dir={data_dir}` on a machine with network"
        )
    return (
        f"run `tfds build {info.tfds_name} --data_dir={data_dir}` on a machine with network "
        f"access and copy {data_dir}/{info.tfds_name} here"
    )


def default_data_dir() -> str:
    """`$TFDS_DATA_DIR`, else tfds's default (`~/tensorflow_datasets`)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(tfds.core.constants.DATA_DIR)


def get_dataset(
    name: str, data_dir: str | None = None
) -> tuple[DatasetInfo, tfds.core.DatasetBuilder]:
    """The registered dataset `name` and its tfds builder over prepared data in `data_dir`."""
    if name not in DATASETS:
        raise UserError(
            f"Unknown dataset {name!r}; set config.dataset.name to one of {sorted(DATASETS)}."
        )
    info = DATASETS[name]
    data_dir = data_dir or default_data_dir()
    try:
        builder = tfds.builder(info.tfds_name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # tfds raises json/protobuf errors for a damaged dataset_info.json
        reason = str(e).strip().splitlines()[-1][:200]
        raise UserError(
            f"the metadata of {info.tfds_name} in {data_dir} is unreadable ({reason}): "
            f"delete {os.path.join(data_dir, info.tfds_name.split('/')[0])} and prepare it "
            f"again: {_how_to_prepare(info, data_dir)}"
        ) from None
    if not prepared:
        if info.tfds_name == "fashion_mnist" and fashion_mnist.debian_files_present():
            print(
                f"Preparing fashion_mnist in {data_dir} from {fashion_mnist.DEBIAN_SOURCE_DIR} "
                "(once, a few seconds).",
                flush=True,
            )
            fashion_mnist.prepare_fashion_mnist(data_dir)
            builder = tfds.builder(info.tfds_name, data_dir=data_dir)
        else:
            raise UserError(
                f"Dataset {info.tfds_name} is not prepared in {data_dir} (set "
                f"config.dataset.data_dir or $TFDS_DATA_DIR if it is elsewhere). To prepare "
                f"it, {_how_to_prepare(info, data_dir)}."
            )
    num_train = split_num_examples(builder, info.train_split)
    return dataclasses.replace(info, num_train_examples=num_train), builder


def damaged_data(
    info: DatasetInfo, builder: tfds.core.DatasetBuilder, split: str, error
) -> UserError:
    """The UserError for a record that cannot be read (a truncated or corrupt file)."""
    reason = str(getattr(error, "message", error)).strip().splitlines()[0]
    reason = reason.split("}}")[-1].strip()[:200]
    data_dir = os.fspath(builder.data_dir)
    files = f"{data_dir}/{builder.name}-{split.split('[')[0]}.tfrecord-*"
    return UserError(
        f"a record of {files} cannot be read ({reason}): the prepared dataset is damaged; "
        f"delete {data_dir} and prepare it again: "
        f"{_how_to_prepare(info, os.path.dirname(os.path.dirname(data_dir)))}"
    )


def split_num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Examples in `split` (slices and `+` allowed); a bad split name is a UserError."""
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
        raise UserError(
            f"Split {split!r} is not valid for {builder.name}: {e}. Use one of "
            f"{sorted(builder.info.splits)}, optionally sliced like 'train[:1000]'."
        ) from e
