"""The bare stack, without any bert_squad code: a tiny MindSpore network exported to MindIR,
served by start_servables on CPU through MindSpore Lite, answering over gRPC and REST.
When this fails, the set-up (Python 3.9 venv, Lite runtime, LD_LIBRARY_PATH) is broken."""
import textwrap

import numpy as np

from bert_squad.runtimes.lite_lib import with_lite_on_library_path
from bert_squad.front.health import READY_MARKER
from harness import PY39, Server, free_port
from wire import rest_post

SERVABLE = """
from mindspore_serving.server import register
model = register.declare_model(model_file="scale_add.mindir", model_format="MindIR", with_batch_dim=False)

@register.register_method(output_names=["y"])
def scale_add(x1, x2):
    y = register.add_stage(model, x1, x2, outputs_count=1)
    return y
"""

LAUNCHER = """
import sys, time
from mindspore_serving import server
from mindspore_serving._mindspore_serving import ExitSignalHandle_
servable_dir, grpc, rest = sys.argv[1:]
server.start_servables(server.ServableStartConfig(servable_dir, "tiny", device_ids=0), enable_lite=True)
server.start_grpc_server(grpc)
server.start_restful_server(rest)
print("\\n%s", flush=True)  # one write on a fresh line: Serving's C++ threads print too
while not ExitSignalHandle_.has_stopped():
    time.sleep(0.1)
server.stop()
""" % READY_MARKER


def export_tiny(path):
    import mindspore as ms
    from mindspore import nn

    class ScaleAdd(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w = ms.Parameter(ms.Tensor(np.array([[2.0, 3.0]], np.float32)))

        def construct(self, x1, x2):
            return x1 * self.w + x2

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.export(ScaleAdd(), ms.Tensor(np.zeros([2, 2], np.float32)), ms.Tensor(np.zeros([2, 2], np.float32)),
              file_name=str(path), file_format="MINDIR")


def test_tiny_mindir_answers_over_grpc_and_rest(tmp_path):
    (tmp_path / "servables" / "tiny" / "1").mkdir(parents=True)
    (tmp_path / "servables" / "tiny" / "servable_config.py").write_text(textwrap.dedent(SERVABLE))
    export_tiny(tmp_path / "servables" / "tiny" / "1" / "scale_add")
    (tmp_path / "launch.py").write_text(LAUNCHER)
    x1 = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    x2 = np.array([[10.0, 20.0], [30.0, 40.0]], np.float32)
    want = x1 * np.array([[2.0, 3.0]], np.float32) + x2

    grpc, rest = free_port(), free_port()
    command = [str(PY39), str(tmp_path / "launch.py"), str(tmp_path / "servables"), f"127.0.0.1:{grpc}",
               f"127.0.0.1:{rest}"]
    server = Server(tmp_path / "run", command=command, grpc_port=grpc, rest_port=rest,
                    env=with_lite_on_library_path({}))
    with server:
        from mindspore_serving.client import Client

        got = Client(server.grpc_address, "tiny", "scale_add").infer([{"x1": x1, "x2": x2}])
        np.testing.assert_allclose(got[0]["y"], want)

        reply = rest_post(server.rest_address, "/model/tiny:scale_add",
                          {"instances": [{"x1": x1.tolist(), "x2": x2.tolist()}]}, timeout=30)
        np.testing.assert_allclose(reply["instances"][0]["y"], want)
    assert server.worker_pids() == [], "a worker outlived the server"
