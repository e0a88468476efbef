"""Where the tests find the shared biomedical datasets: :func:`bmrag.loading.data_root`.

That is ``$BMRAG_DATA``, else ``../shared/data`` beside the repository; tests needing the data skip when neither
exists (e.g. a clone elsewhere without the variable set).
"""

from __future__ import annotations

from bmrag.loading import REPOSITORY_DATA, data_root

SHARED_DATA = data_root() or REPOSITORY_DATA
"""Root holding one folder per dataset (scifact/, biosses/, ...); tests needing it skip when it is absent."""
