"""The LIBERO data layer shared by both stages (see ARCHITECTURE.md).

Modules: suites (suite -> folders, format detection), lerobot_format (v2.0/v2.1/v3.0 reader), libero_hdf5
(LIBERO's HDF5 release), mixture (global frame index,
sequential + random access), transforms (the one image path), content_id, norm_stats, writer.
Only the light `frame_content_id` is re-exported here, so `import geo3d.data` stays cheap.
"""

from geo3d.data.dataset_base import frame_content_id

__all__ = ["frame_content_id"]
