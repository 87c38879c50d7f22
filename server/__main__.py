"""The image's entrypoint: uvicorn serving create_app on $PORT."""

import uvicorn

from server.app import create_app
from server.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
