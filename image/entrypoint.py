"""Container CMD and host command: ``python image/entrypoint.py [--local]``.

The same code path in the image and on a plain host (tests, local run): it only puts the
runtime package next to this file on sys.path and hands over to its supervisor.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlflow_heroku_runtime.supervisor import main  # needs the path above

if __name__ == "__main__":
    sys.exit(main())
