"""mobiledense.datasets: COCO-format detection, Cityscapes-layout segmentation and classification data.

One import statement per module; other modules append their own exports below.
"""

from .coco import (
    CocoDetection,
    CocoFormatError,
    DegenerateBoxWarning,
    collate_detection,
    load_coco_json,
    make_det_loader,
)
from .det_transforms import DetectionTransform, build_det_transforms
from .io import ImageReadError, read_image_rgb, worker_init_fn
from .synthetic import make_synthetic_coco
from .cityscapes import CityscapesFrame, CityscapesSegmentation, read_label_png
from .seg_transforms import SegTransform, build_seg_transforms
from .synthetic_seg import make_synthetic_cityscapes
from .classification import (
    CIFAR10_CLASSES,
    Cifar10,
    ClsTransform,
    ImageFolderClassification,
    build_cls_transforms,
    coco_crops_to_imagefolder,
    load_cifar_batch,
    write_cifar_batch,
)
from .voc_yolo import (
    VOC_CLASSES,
    AnnotationFormatError,
    read_class_names,
    voc_to_coco,
    write_coco_json,
    yolo_to_coco,
)
from .seg_folder import SegFolder, SegFolderFrame, read_seg_classes
