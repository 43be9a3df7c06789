"""Input pipelines (grain): sources that return plain numpy records, transforms to static shapes.

Sources: `ShapesWorld` (procedural default world), `CocoDetection` / `CocoCaptions` (COCO-format
json + images, OVD and LVIS splits), `TsvImageText` / `JsonlImageText` / `ArrayRecordImageText` (image-text
pairs), `TfdsDetection` / `TfdsImageText` (`tfds.data_source`, imported from
`regionclip_jax.data.tfds_source`).
Records: image uint8 [H, W, 3], boxes float32 [K, 4] x1y1x2y2 px, labels int32 [K],
captions list[str], image_id int. After the transforms: image float32 [S, S, 3] (CLIP-normalised)
or uint8, image_mask bool [S, S], image_size int32 [2], boxes [B, 4], box_mask [B], labels [B],
caption_tokens int32 [77].
"""

from regionclip_jax.data.coco import CocoCaptions, CocoDetection
from regionclip_jax.data.image_text import JsonlImageText, TsvImageText
from regionclip_jax.data.pipeline import CachedSource, make_dataset, make_pipeline
from regionclip_jax.data.shapes_world import DEFAULT_CONCEPTS, DEFAULT_NOVEL, ShapesWorld
from regionclip_jax.data.validation import DataError, IssueCounter

__all__ = [
    "CachedSource",
    "CocoCaptions",
    "CocoDetection",
    "DataError",
    "DEFAULT_CONCEPTS",
    "DEFAULT_NOVEL",
    "IssueCounter",
    "JsonlImageText",
    "ShapesWorld",
    "TsvImageText",
    "make_dataset",
    "make_pipeline",
]
