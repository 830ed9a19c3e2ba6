"""The REST handlers of the server extension, under `<base_url>/layerq/` (all need the server's token):

  GET  tutorials               {"tutorials": [{number, name, title, summary, time}, ...], "folder": default}
  POST tutorials/NN/open       {"folder": ...} -> {"path", "created"}   the learner's copy, made on first use
  POST tutorials/NN/reset      {"folder": ...} -> {"path", "backup"}    backup of the learner's version, clean copy
  POST syllabus                {"folder": ...} -> {"path"}
  GET  health                  {"checks": [{name, status, detail, fix}], "problems", "server", "kernel"}

Paths in answers are relative to the server root (what JupyterLab's `docmanager:open` takes). The work is
done by the pure functions of `tutorials` and `health`; these classes only translate HTTP.
"""
from __future__ import annotations

import asyncio
import json

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from . import health, tutorials


class _Handler(APIHandler):
    def _root(self) -> str:
        return self.contents_manager.root_dir

    def _folder(self) -> str:
        body = json.loads(self.request.body or b"{}")
        return body.get("folder") or tutorials.DEFAULT_FOLDER

    def _answer(self, call):
        """Run `call()`; a bad folder is a 400 and an unknown tutorial a 404, each with its message."""
        try:
            result = call()
        except ValueError as err:
            self.set_status(400)
            result = {"message": str(err)}
        except KeyError as err:
            self.set_status(404)
            result = {"message": err.args[0] if err.args else str(err)}
        self.finish(json.dumps(result))


class Tutorials(_Handler):
    @tornado.web.authenticated
    def get(self):
        self._answer(lambda: {"tutorials": [t.as_json() for t in tutorials.catalogue()],
                              "folder": tutorials.DEFAULT_FOLDER})


class OpenTutorial(_Handler):
    @tornado.web.authenticated
    def post(self, number: str):
        self._answer(lambda: vars(tutorials.open_copy(number, root=self._root(), folder=self._folder())))


class ResetTutorial(_Handler):
    @tornado.web.authenticated
    def post(self, number: str):
        self._answer(lambda: vars(tutorials.reset_copy(number, root=self._root(), folder=self._folder())))


class Syllabus(_Handler):
    @tornado.web.authenticated
    def post(self):
        self._answer(lambda: {"path": tutorials.syllabus_copy(root=self._root(), folder=self._folder())})


class Health(_Handler):
    @tornado.web.authenticated
    async def get(self):
        argv = None
        try:
            name = self.kernel_manager.default_kernel_name
            argv = self.kernel_spec_manager.get_kernel_spec(name).argv
        except Exception as err:      # noqa: BLE001 - no kernel is itself a finding of the check
            self.log.warning("layerq health: no default kernelspec (%s)", err)
        # the kernel's interpreter imports torch: seconds, so off the server's event loop
        result = await asyncio.get_running_loop().run_in_executor(None, health.report, argv)
        self.finish(json.dumps(result))


def routes(base_url: str) -> list[tuple]:
    def at(path):
        return url_path_join(base_url, "layerq", path)
    return [(at("tutorials"), Tutorials), (at(r"tutorials/(\w+)/open"), OpenTutorial),
            (at(r"tutorials/(\w+)/reset"), ResetTutorial), (at("syllabus"), Syllabus), (at("health"), Health)]
