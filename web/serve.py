"""Serve the translation page and an exported model folder on localhost.

    python web/serve.py --model outputs/multi30k-de-en/model      # then open http://localhost:8000/

The page (web/) is served at / and the model folder (with the onnx/ files of `python -m
hf_vanilla_transformer.onnx_backend`) at /model/; `npm install --ignore-scripts` in web/ first installs what the
page imports. Nothing is fetched from elsewhere.
"""

import argparse
import functools
import http.server
import urllib.parse
from pathlib import Path

WEB = Path(__file__).resolve().parent


class Handler(http.server.SimpleHTTPRequestHandler):
    """web/ at /, the model folder at /model/; JavaScript modules and WebAssembly with their MIME types."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def __init__(self, *args, model: Path, **kwargs):
        self.model = model
        super().__init__(*args, directory=str(WEB), **kwargs)

    def translate_path(self, path: str) -> str:
        if not path.startswith("/model/"):
            return super().translate_path(path)
        file = (self.model / urllib.parse.unquote(path.split("?")[0].removeprefix("/model/"))).resolve()
        return str(file) if file.is_relative_to(self.model) else str(self.model / "not-found")

    def log_message(self, *args) -> None:  # quiet: the page reports what happens
        pass


def serve(model: Path, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A server of the page and `model` on localhost:`port` (0: any free port); call `serve_forever` on it."""
    if not (WEB / "node_modules").is_dir():
        raise SystemExit(f"error: {WEB / 'node_modules'} is missing: run `npm install --ignore-scripts` in {WEB}")
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, model=model.resolve()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a model folder with the ONNX export in onnx/")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if not (args.model / "onnx" / "encoder_model.onnx").is_file():
        parser.error(f"{args.model} has no onnx/encoder_model.onnx: export it with "
                     "`python -m hf_vanilla_transformer.onnx_backend --model FOLDER`")
    server = serve(args.model, args.port)
    print(f"Serving the page at http://localhost:{server.server_port}/ with the model {args.model}")
    server.serve_forever()


if __name__ == "__main__":
    main()
