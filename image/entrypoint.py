"""Container CMD and host command: ``python image/entrypoint.py [--local]``.

The same code path in the image and on a plain host (tests, local run): it only puts the
runtime package next to this file on sys.path and hands over to its supervisor, or, in
Heroku's release-phase dyno (DYNO is ``release.<N>``: the ``release`` process type runs this
same CMD before a release's web dynos boot), to the release phase, which migrates the schema.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    if os.environ.get("DYNO", "").startswith("release."):
        from mlflow_heroku_runtime import release_phase  # needs the path above

        status = release_phase.main()
        sys.stdout.flush()
        sys.stderr.flush()
        # As the module's own __main__: skip the teardown of what MLflow and Alembic imported.
        os._exit(status)
    from mlflow_heroku_runtime.supervisor import main  # needs the path above

    sys.exit(main())
