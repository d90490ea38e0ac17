"""tpcompiler: compile networks written in the .tp language to their infinite-width kernels."""

__version__ = "0.1.0"

from .api import CompiledNetwork as CompiledNetwork  # noqa: E402
from .api import compile as compile  # noqa: E402
from .api import compile_source as compile_source  # noqa: E402
from .errors import TPError as TPError  # noqa: E402
from .errors import TPWarning as TPWarning  # noqa: E402
from .lower import lower as lower  # noqa: E402
from .parse import parse_file as parse_file  # noqa: E402
from .parse import parse_source as parse_source  # noqa: E402
