"""Run one stage artifact: torch (.pt2), AOTInductor (.aoti.pt2), onnxruntime (.onnx) or
TensorRT (.plan).

Each backend runs one program entry of the manifest (a stage, or one of its temporal-reuse
programs). `run(*inputs)` takes the entry's inputs in order (sample, timestep,
encoder_hidden_states, then any residuals), cast to the recorded dtypes on the backend's device,
and returns every output in the entry's order on that device (residuals stay there, in their own
dtype, for the next step). Calling a backend `(sample, timestep, encoder_hidden_states)` returns
noise_pred alone as float32 on the device of `sample`. TensorRT engines share one device-memory
buffer (the stages never run at once) and use name-based I/O.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import F3Error

BACKENDS = ("torch", "aoti", "onnxruntime", "tensorrt")
def _dtypes(stage: dict) -> list[torch.dtype]:
    return [getattr(torch, spec["dtype"]) for spec in stage["inputs"]]


class _Backend:
    """The shared call convention: `run` returns all outputs; calling returns noise_pred."""

    def __call__(self, sample, timestep, context):
        return self.run(sample, timestep, context)[0].to(sample.device, torch.float32)


class WeightPool:
    """The weights the programs of one build hold, shared: a torch program's tensor equal (name,
    dtype, shape and values) to one an earlier program of the build holds is replaced by it before
    the program is placed on its device; an ONNX graph's initializers come from the build's one
    weight file, each stored tensor mapped once (`onnx_initializers`). The stages and reuse
    programs of a plan hold one copy of what they have in common (a stage that regroups heads for
    its windows differs from the others only in those attentions' q/k/v/o rows); `bytes` counts
    what the pool holds."""

    def __init__(self) -> None:
        self._held: dict[tuple, list[torch.Tensor]] = {}
        self._files: dict[Path, np.memmap] = {}
        self._values: dict[tuple, object] = {}  # (file, offset, length, type, shape) -> OrtValue

    @staticmethod
    def _tables(program) -> list[dict]:
        return [program.state_dict, program.constants]

    def share(self, program) -> int:
        """Replace `program`'s tensors by equal ones held already; returns the bytes no longer copied."""
        saved = 0
        for table in self._tables(program):
            for name, tensor in list(table.items()):
                if not isinstance(tensor, torch.Tensor):
                    continue
                for held in self._held.get((name, tensor.dtype, tuple(tensor.shape)), []):
                    if held is tensor or torch.equal(held, tensor.to(held.device)):
                        if held is not tensor:
                            saved += tensor.numel() * tensor.element_size()
                            table[name] = held
                        break
        return saved

    def add(self, program) -> None:
        for table in self._tables(program):
            for name, tensor in table.items():
                if isinstance(tensor, torch.Tensor):
                    held = self._held.setdefault((name, tensor.dtype, tuple(tensor.shape)), [])
                    if not any(h is tensor for h in held):
                        held.append(tensor)

    def onnx_initializers(self, path: Path) -> dict[str, object]:
        """OrtValues for the external initializers of the ONNX graph at `path`, over a read-only
        mapping of its weight file: one per stored tensor, whichever graphs reference it."""
        import onnx
        from onnx.external_data_helper import ExternalDataInfo
        from onnx.helper import tensor_dtype_to_np_dtype
        from onnxruntime import OrtValue

        values = {}
        for init in onnx.load(str(path), load_external_data=False).graph.initializer:
            if init.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = ExternalDataInfo(init)
            if Path(info.location).name != info.location or info.length is None:
                raise F3Error(f"{path}: initializer {init.name!r} lies in {info.location!r}, not beside the graph; "
                              "export the build again with `f3compile export`")
            file = (Path(path).parent / info.location).resolve()
            shape, offset = tuple(init.dims), info.offset or 0  # no offset: the file's start
            key = (file, offset, info.length, init.data_type, shape)
            if key not in self._values:
                if file not in self._files:
                    self._files[file] = np.memmap(file, dtype=np.uint8, mode="r")
                data = self._files[file][offset:offset + info.length]
                if init.data_type == onnx.TensorProto.BFLOAT16:  # numpy has no bfloat16: its bits, typed by ONNX
                    self._values[key] = OrtValue.ortvalue_from_numpy_with_onnx_type(
                        data.view(np.uint16).reshape(shape), init.data_type)
                else:
                    self._values[key] = OrtValue.ortvalue_from_numpy(
                        data.view(tensor_dtype_to_np_dtype(init.data_type)).reshape(shape))
            values[init.name] = self._values[key]
        return values

    @property
    def bytes(self) -> int:
        return (sum(t.numel() * t.element_size() for held in self._held.values() for t in held)
                + sum(key[2] for key in self._values))


class TorchBackend(_Backend):
    """A torch.export program, moved to `device` (`torch.export.passes.move_to_device_pass`), its
    weights shared through `pool` with the build's other programs."""

    kind = "pt2"

    def __init__(self, path: Path, stage: dict, device: torch.device = torch.device("cpu"),
                 pool: WeightPool | None = None):
        self.module = placed_program(path, stage["files"][self.kind]["sha256"], device, pool).module()
        self.device, self.dtypes = device, _dtypes(stage)

    def run(self, *inputs):
        args = [t.to(self.device, dtype) for t, dtype in zip(inputs, self.dtypes)]
        with torch.no_grad():
            output = self.module(*args)
        return list(output) if isinstance(output, (tuple, list)) else [output]


class AotiBackend(_Backend):
    """An AOTInductor package: compiled kernels for the device it was built for. A package exported
    without weights computes with its stage's torch program's tensors (`stage["files"]["pt2"]`),
    loaded through `pool` so that stages share what they have in common."""

    kind = "aoti"

    def __init__(self, path: Path, stage: dict, device: torch.device = torch.device("cpu"),
                 pool: WeightPool | None = None):
        built = stage["files"]["aoti"].get("device", "cpu")
        if built != device.type:
            raise F3Error(f"{path} was compiled for {built}, not {device.type}; run with --device {built} "
                          f"or export again with --target aoti --device {device.type}")
        from ..devices import load_aoti

        program = None
        if stage.get("aoti", {}).get("weights") == "pt2":
            entry = stage["files"]["pt2"]
            program = placed_program(path.parent / Path(entry["path"]).name, entry["sha256"], device, pool)
        self.model = load_aoti(path, device, program)
        self.program = program  # the package computes with its tensors: kept alive with it
        self.device, self.dtypes = device, _dtypes(stage)

    def run(self, *inputs):
        args = [t.to(self.device, dtype).contiguous() for t, dtype in zip(inputs, self.dtypes)]
        with torch.no_grad():
            output = self.model(*args)
        return list(output) if isinstance(output, (list, tuple)) else [output]


def session_options(providers: list[str]):
    """onnxruntime's options for a build's sessions, loaded side by side. On the CPU no arena and no
    preplanned block: intermediate tensors are freed when they die, as torch frees them, so each
    stage's session does not keep its largest call's activations (gigabytes of attention scores at
    a few thousand tokens) after it ran. On small graphs the arena is faster (`tools/onnx_weight_sharing.py`
    measures both at the sizes where memory matters)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if providers[0] == "CPUExecutionProvider":
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    return options


class OnnxruntimeBackend(_Backend):
    """An onnxruntime session over one ONNX graph (`session_options`). On the CPU the sessions of a
    build compute with the initializers of `pool`: one mapping of the build's weight file, shared
    by every stage, and not repacked per session (`session.disable_prepacking`: each session would
    hold a packed copy of every matrix). With the CUDA provider each session copies its weights to
    the GPU."""

    kind = "onnx"

    def __init__(self, path: Path, stage: dict, device: torch.device = torch.device("cpu"),
                 pool: WeightPool | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise F3Error("--backend onnxruntime needs onnxruntime: pip install onnxruntime") from None
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()]
        options = session_options(providers)
        initializers = {}
        if pool is not None and providers[0] == "CPUExecutionProvider":
            initializers = pool.onnx_initializers(path)
            for name, value in initializers.items():
                options.add_initializer(name, value)
            options.add_session_config_entry("session.disable_prepacking", "1")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.initializers = initializers  # set after the session: released after it, which computes with them
        self.inputs = [(spec["name"], getattr(torch, spec["dtype"])) for spec in stage["inputs"]]
        self.outputs = [spec["name"] for spec in stage["outputs"]]

    def run(self, *inputs):
        feed = {name: tensor.detach().cpu().to(dtype).numpy() for (name, dtype), tensor in zip(self.inputs, inputs)}
        return [torch.from_numpy(np.asarray(value)).to(inputs[0].device) for value in self.session.run(self.outputs, feed)]


class TensorrtBackend(_Backend):
    kind = "trt"
    _shared: dict = {}

    def __init__(self, path: Path, stage: dict, device: torch.device = torch.device("cuda")):
        try:
            import tensorrt as trt
        except ImportError:
            raise F3Error("--backend tensorrt needs TensorRT: pip install 'f3compile[trt]'") from None
        if not torch.cuda.is_available():
            raise F3Error("--backend tensorrt needs an NVIDIA GPU with CUDA")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise F3Error(f"{path} is not an engine for this TensorRT/GPU; rebuild it with `f3compile export --target trt`")
        size = getattr(self.engine, "device_memory_size_v2", None) or self.engine.device_memory_size
        shared = TensorrtBackend._shared
        if shared.get("bytes", 0) < size:  # one scratch buffer for every stage engine
            shared["buffer"] = torch.empty(size, dtype=torch.uint8, device="cuda")
            shared["bytes"] = size
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        self.context = (self.engine.create_execution_context(strategy.USER_MANAGED) if strategy
                        else self.engine.create_execution_context_without_device_memory())
        self.dtypes = {spec["name"]: getattr(torch, spec["dtype"]) for spec in stage["inputs"] + stage["outputs"]}
        self.inputs = [spec["name"] for spec in stage["inputs"]]
        self.outputs = [spec["name"] for spec in stage["outputs"]]
        self.stream = torch.cuda.Stream()

    def run(self, *tensors):
        buffer = TensorrtBackend._shared["buffer"]
        if hasattr(self.context, "set_device_memory"):
            self.context.set_device_memory(buffer.data_ptr(), buffer.numel())
        else:
            self.context.device_memory = buffer.data_ptr()
        inputs = {}
        for name, tensor in zip(self.inputs, tensors):
            inputs[name] = tensor.to("cuda", self.dtypes[name]).contiguous()
            self.context.set_input_shape(name, tuple(inputs[name].shape))
            self.context.set_tensor_address(name, inputs[name].data_ptr())
        outputs = []
        for name in self.outputs:
            outputs.append(torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device="cuda"))
            self.context.set_tensor_address(name, outputs[-1].data_ptr())
        with torch.cuda.stream(self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return outputs


def placed_program(path: Path, sha256: str, device: torch.device, pool: WeightPool | None = None):
    """The torch.export program at `path` with its weights on `device` (`move_to_device_pass`),
    shared through `pool` with the build's other programs."""
    program = load_program(path, sha256)
    if {t.device for t in program.state_dict.values()} != {device}:
        program = torch.export.load(str(path))  # it is placed in place: a copy of its own
    if pool is not None:  # before placing: what is shared is not copied to the device again
        pool.share(program)
    if {t.device for t in program.state_dict.values()} != {device}:
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    if pool is not None:
        pool.add(program)
    return program


def load_program(path: Path, sha256: str) -> torch.export.ExportedProgram:
    """`torch.export.load(path)`, whose bytes have `sha256` (checked when the manifest was loaded); a
    small program loaded before under the same sha256 is returned as it is (`memo.LOADED`): callers
    only read it."""
    from .. import memo

    program = memo.LOADED.get(sha256)
    if program is None:
        program = torch.export.load(str(path))
        memo.LOADED.put(sha256, program, memo.program_bytes(program))
    return program


def make_backend(name: str, build: Path, stage: dict, device: str | torch.device = "cpu", label: str | None = None,
                 pool: WeightPool | None = None):
    from ..devices import check_device

    device = check_device(device)
    classes = {"torch": TorchBackend, "aoti": AotiBackend, "onnxruntime": OnnxruntimeBackend, "tensorrt": TensorrtBackend}
    if name not in classes:
        raise F3Error(f"--backend {name!r} is unknown; use one of {', '.join(BACKENDS)}")
    cls = classes[name]
    entry = stage["files"].get(cls.kind)
    if entry is None:
        hint = {"onnx": "f3compile export --target onnx", "trt": "f3compile export --target trt",
                "aoti": "f3compile export --target aoti"}.get(cls.kind, "f3compile compile")
        raise F3Error(f"{label or 'stage' + str(stage['index'])} has no {cls.kind} artifact for --backend {name}; build it with `{hint}`")
    if cls is TensorrtBackend:
        return cls(build / entry["path"], stage, device)
    return cls(build / entry["path"], stage, device, pool)
