"""Reading and writing dpl artifacts: safetensors files with string metadata. No pickle anywhere.

    files        read_header (every read starts here), atomic writes, `save`, sha256 of a file
    metadata     META_RULES: what readers rely on in the metadata, checked on reading
    checkpoints  Checkpoint, load_checkpoint, save_checkpoint, loading weights into a model
    shards       label folders: shards, sample keys, completeness checks (`read_labels`, `shard_headers`)

The submodules' public names are re-exported here: callers write `artifacts.read_header(...)`.
"""

from __future__ import annotations

from .metadata import HEAD_NAME, META_RULES
from .files import (DTYPE_SIZES, FORMAT, MAX_HEADER, PLAIN_KEYS, Header, atomic_write, check_writable,
                    encode_metadata, load_tensors, read_header, replace_folder, require, save,
                    sha256_file)
from .checkpoints import (OBJECTIVE_PREFIX, Checkpoint, check_state, checkpoint_task, input_meta, load_checkpoint,
                          load_state, save_checkpoint)
from .shards import (KEY_TENSORS, LABEL_KEYS, SHARD_DTYPES, SHARD_NDIM, SHARD_TENSORS, VIEW_FORMAT, LabelViews,
                     Labels, check_complete,
                     decode_keys, encode_keys, folder_data, folder_kind, folder_sha256, read_labels, same_shard,
                     shard_headers, shard_meta, shard_name)
