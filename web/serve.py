"""Serve the translation page and an exported model folder on localhost.

    python web/serve.py --model outputs/multi30k-de-en/model      # then open http://localhost:8000/

The page (web/) is served at / and the model folder (with the onnx/ files of `python -m
hf_vanilla_transformer.onnx_backend`) at /model/; `npm install --ignore-scripts` in web/ first installs what the
page imports. Nothing is fetched from elsewhere, and nothing is served but the page's own files and the model
folder's: no folder listings, no server source, no hidden files. An export of other weights than the folder's
`model.safetensors` is refused before the server starts.
"""

import argparse
import functools
import http
import http.server
import sys
import urllib.parse
from pathlib import Path

WEB = Path(__file__).resolve().parent
PAGE_SUFFIXES = (".html", ".js", ".mjs", ".css")  # web/'s own files the page reads; not .py


class Handler(http.server.SimpleHTTPRequestHandler):
    """web/ at /, the model folder at /model/; JavaScript modules and WebAssembly with their MIME types."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def __init__(self, *args, model: Path, **kwargs):
        self.model = model
        super().__init__(*args, directory=str(WEB), **kwargs)

    def send_head(self):
        """The file a request names, if it is one of the page's or the model's: else 404 (400 for a NUL byte)."""
        path = urllib.parse.unquote(self.path.split("?")[0].split("#")[0])
        if "\0" in path:
            self.send_error(http.HTTPStatus.BAD_REQUEST, "NUL byte in the path")
            return None
        parts = [part for part in path.split("/") if part]
        page = not parts or parts[0] == "node_modules" or (len(parts) == 1 and parts[0].endswith(PAGE_SUFFIXES))
        if any(part.startswith(".") for part in parts) or not (page or parts[0] == "model"):
            self.send_error(http.HTTPStatus.NOT_FOUND)
            return None
        return super().send_head()

    def translate_path(self, path: str) -> str:
        if not path.startswith("/model/"):
            return super().translate_path(path)
        file = (self.model / urllib.parse.unquote(path.split("?")[0].removeprefix("/model/"))).resolve()
        return str(file) if file.is_relative_to(self.model) else str(self.model / "not-found")

    def list_directory(self, path):  # a folder without index.html is not listed
        self.send_error(http.HTTPStatus.NOT_FOUND)
        return None

    def log_message(self, *args) -> None:  # quiet: the page reports what happens
        pass


def serve(model: Path, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A server of the page and `model` on localhost:`port` (0: any free port); call `serve_forever` on it. Raises
    `SystemExit` with one line for what stops it: the page's packages missing, an export of other weights (or of
    two exports) in `model`/onnx/, a port in use."""
    from hf_vanilla_transformer.onnx_backend import check_export

    try:
        check_export(model)  # what the page would run must be the folder's model
    except (ImportError, OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    if not (WEB / "node_modules").is_dir():
        raise SystemExit(f"error: {WEB / 'node_modules'} is missing: run `npm install --ignore-scripts` in {WEB}")
    try:
        return http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, model=model.resolve()))
    except OSError as error:
        raise SystemExit(f"error: port {port} on 127.0.0.1 cannot be used ({error.strerror or error}): pass another "
                         "--port (0: any free one)") from None


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give 0 to 65535 (0: any free one)")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a model folder with the ONNX export in onnx/")
    parser.add_argument("--port", type=port_number, default=8000)
    args = parser.parse_args(argv)
    if not (args.model / "onnx" / "encoder_model.onnx").is_file():
        parser.error(f"{args.model} has no onnx/encoder_model.onnx: export it with "
                     "`python -m hf_vanilla_transformer.onnx_backend --model FOLDER`")
    server = serve(args.model, args.port)
    print(f"Serving the page at http://localhost:{server.server_port}/ with the model {args.model}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
