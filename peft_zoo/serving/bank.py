"""Named adapter slots over a model's batched LoRA layers: load, evict, and turn names into ids.

:class:`AdapterBank` manages the ``N`` slots that every :class:`~peft_zoo.serving.batched.BatchedLoRALinear`
in a model shares. Each slot holds one ordinary single-adapter LoRA (what ``inject_lora`` +
training + ``save_adapter`` produce), zero-padded to the bank's rank::

    bank = AdapterBank(model)
    bank.load("cell_type", "runs/cell_type")          # a directory or file from save_adapter
    bank.load("disease", adapter_state_dict(other))   # or an adapter state dict
    with use_adapters(model, bank.ids(["cell_type", None, "disease"])):
        out = model(x)                                  # sample 1 runs the base model

Every operation checks everything first and changes nothing on error. ``load_async``
copies upcoming adapters into free slots on a worker thread while the current batch runs
(on a GPU, on a side stream); ``ids`` waits only for the loads it needs. Reading an adapter
and checking it against the batched layers, before any slot is touched, is :mod:`.slots`.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn

from .batched import BatchedLoRALinear, batched_lora_layers
from .slots import AdapterSource, BankError, SlotPlan, plan_slot

__all__ = ["AdapterBank", "BankError"]


class AdapterBank:
    """Named slots over the stacked adapter tensors of ``model``'s batched layers.

    Args:
        model: a model holding :class:`BatchedLoRALinear` layers (from
            :func:`~peft_zoo.serving.batched.inject_batched_lora`), all with the same number of slots.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise BankError(f"AdapterBank: model must be an nn.Module, got {type(model).__name__}")
        layers = batched_lora_layers(model)
        if not layers:
            raise BankError(
                "AdapterBank: the model has no BatchedLoRALinear layers (inject_batched_lora first)"
            )
        counts = {layer.num_adapters for layer in layers.values()}
        if len(counts) != 1:
            raise BankError(
                f"AdapterBank: the batched layers disagree on the number of slots: {sorted(counts)}"
            )
        self.model = model
        self.layers: dict[str, BatchedLoRALinear] = layers
        self.num_slots = counts.pop()
        self._slots: list[str | None] = [None] * self.num_slots
        self._serial = [0] * self.num_slots  # which load is in each slot (0: never loaded)
        self._next_serial = 1
        self._pending: dict[str, Future[int]] = {}
        self._lock = threading.RLock()
        self._executor: ThreadPoolExecutor | None = None
        self._epoch = 0  # bumped when the weights change behind the bank's back
        self._known_versions = self._param_versions()
        self._stream: torch.cuda.Stream | None = None
        self._events: dict[str, torch.cuda.Event] = {}

    # ------------------------------------------------------------------ inspection

    @property
    def names(self) -> dict[str, int]:
        """``name -> slot`` of every loaded (or loading) adapter."""
        with self._lock:
            return {name: i for i, name in enumerate(self._slots) if name is not None}

    @property
    def free_slots(self) -> int:
        with self._lock:
            return self._slots.count(None)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"AdapterBank({len(self)}/{self.num_slots} slots used: {list(self.names)})"

    def slot(self, name: str) -> int:
        """The slot holding ``name``; raises :class:`BankError` (with close matches) if none."""
        with self._lock:
            if name not in self._slots:
                raise BankError(self._unknown(name))
            return self._slots.index(name)

    def _unknown(self, name: object) -> str:
        loaded = [n for n in self._slots if n is not None]
        close = difflib.get_close_matches(str(name), loaded, n=3, cutoff=0.6)
        hint = f"; did you mean {close}?" if close else ""
        return f"no adapter named {name!r} in the bank (loaded: {loaded}){hint}"

    # ------------------------------------------------------------------ loading

    def _reserve(self, name: str) -> int:
        with self._lock:
            if name in self._slots:
                raise BankError(
                    f"an adapter named {name!r} is already loaded (slot {self._slots.index(name)}); evict it first"
                )
            if None not in self._slots:
                raise BankError(
                    f"the bank is full ({self.num_slots} slots: {self._slots}); evict an adapter before loading {name!r}"
                )
            slot = self._slots.index(None)
            self._slots[slot] = name
            return slot

    @torch.no_grad()
    def _write(self, slot: int, plan: SlotPlan | None) -> None:
        """Copy ``plan`` into ``slot`` of every layer (layers it does not cover get zeros)."""
        with self._lock:
            if self._param_versions() != self._known_versions:
                # The weights changed in place since the bank last looked (an optimizer step):
                # record it now, before this write makes the new counters "known".
                self._epoch += 1
        for layer_name, layer in self.layers.items():
            if plan is not None and layer_name in plan.tensors:
                a, b, scale = plan.tensors[layer_name]
                layer.set_slot(slot, a, b, scale)
            else:
                layer.lora_A[slot].zero_()
                layer.lora_B[slot].zero_()
        with self._lock:
            self._serial[slot] = self._next_serial
            self._next_serial += 1
            self._known_versions = self._param_versions()

    def load(
        self,
        name: str,
        adapter: AdapterSource,
        *,
        alpha: float | None = None,
        rslora: bool = False,
        strict: bool = True,
        allow_unverified: bool = False,
    ) -> int:
        """Copy a single LoRA adapter into a free slot and return the slot.

        Args:
            name: the adapter's name in :meth:`ids`.
            adapter: a path written by :func:`~peft_zoo.save_adapter` (its config supplies
                each layer's alpha and rsLoRA) or an adapter state dict with keys
                ``"<layer>.lora_A" (r', in)`` / ``"<layer>.lora_B" (out, r')``.
            alpha, rslora: the scale of a state dict's layers (alpha defaults to its rank).
            strict: require tensors for every batched layer; with ``False`` the layers the
                adapter does not cover act as the base model for it.
            allow_unverified: accept a file without an integrity digest or config (see
                :func:`~peft_zoo.load_adapter`); its layers then take ``alpha`` / ``rslora``.

        Raises :class:`BankError` for a full bank, a taken name, unknown layers, a rank
        larger than the bank's, a shape mismatch, non-finite weights, a corrupt file, or a
        bad argument (``alpha`` not a finite number > 0, a non-bool flag); nothing changes.
        """
        plan = plan_slot(self.layers, name, adapter, alpha, rslora, strict, allow_unverified)
        return self._fill(self._reserve(name), plan)

    def _fill(self, slot: int, plan: SlotPlan) -> int:
        """Write ``plan`` into the reserved ``slot``; free the slot again if that fails."""
        try:
            self._write(slot, plan)
        except BaseException:
            with self._lock:
                self._slots[slot] = None
            raise
        return slot

    def load_async(
        self,
        name: str,
        adapter: AdapterSource,
        *,
        alpha: float | None = None,
        rslora: bool = False,
        strict: bool = True,
        allow_unverified: bool = False,
    ) -> Future[int]:
        """Like :meth:`load`, but the copy runs on a worker thread while you keep running
        batches; validation and slot reservation happen now, so errors raise here.
        :meth:`ids` waits for the loads of the names it is asked about. Returns a Future
        of the slot. Do not train the bank's weights while loads are in flight."""
        plan = plan_slot(self.layers, name, adapter, alpha, rslora, strict, allow_unverified)
        slot = self._reserve(name)
        device = next(iter(self.layers.values())).lora_A.device
        if device.type == "cuda":  # pinned host copies make the device copies truly asynchronous
            plan = SlotPlan({k: (a.pin_memory(), b.pin_memory(), s) for k, (a, b, s) in plan.tensors.items()})
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peft_zoo-bank")

        def run() -> int:
            if device.type != "cuda":
                return self._fill(slot, plan)
            if self._stream is None:
                self._stream = torch.cuda.Stream(device)
            with torch.cuda.stream(self._stream):
                self._fill(slot, plan)
            event = torch.cuda.Event()
            event.record(self._stream)
            self._events[name] = event
            return slot

        future = self._executor.submit(run)
        with self._lock:
            self._pending[name] = future
        return future

    def wait(self, names: Sequence[str | None] | None = None) -> None:
        """Block until the pending loads of ``names`` (all by default) have been issued; on a
        GPU the current stream then waits for their copies, without a host synchronisation."""
        with self._lock:
            wanted = list(self._pending) if names is None else [n for n in set(names) if n in self._pending]
            futures = {n: self._pending[n] for n in wanted}
        for name, future in futures.items():
            future.result()  # re-raises a failed copy
            with self._lock:
                self._pending.pop(name, None)
            event = self._events.pop(name, None)
            if event is not None:
                torch.cuda.current_stream().wait_event(event)

    def evict(self, name: str) -> int:
        """Free ``name``'s slot (its weights are zeroed, so stale ids act as the base model)
        and return the slot. Raises :class:`BankError` if ``name`` is not loaded."""
        slot = self.slot(name)
        self.wait([name])
        self._write(slot, None)
        with self._lock:
            self._slots[slot] = None
        return slot

    def close(self) -> None:
        """Finish pending loads and stop the worker thread."""
        self.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ routing

    def ids(self, names: Sequence[str | None], device: torch.device | str | None = None) -> torch.Tensor:
        """Per-sample adapter names (``None`` = base model) -> LongTensor ``(B,)`` of slots.

        Names are checked on the host, so the ids need no check on the device. The tensor
        goes to ``device`` (default: the bank's weights' device) without blocking."""
        if isinstance(names, str):
            raise BankError("ids() takes one adapter name per sample (a list), not a single string")
        with self._lock:
            slots = {n: i for i, n in enumerate(self._slots) if n is not None}
        unknown = sorted({str(n) for n in names if n is not None and n not in slots})
        if unknown:
            raise BankError("; ".join(self._unknown(n) for n in unknown))
        self.wait([n for n in names if n is not None])
        ids = torch.tensor([-1 if n is None else slots[n] for n in names], dtype=torch.long)
        target = (
            torch.device(device) if device is not None else next(iter(self.layers.values())).lora_A.device
        )
        if target.type == "cuda":
            return ids.pin_memory().to(target, non_blocking=True)
        return ids.to(target)

    # ------------------------------------------------------------------ versions (for caches)

    def _param_versions(self) -> tuple[int, ...]:
        return tuple(p._version for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B))

    def version(self, name: str | None) -> Hashable:
        """An identity of what ``name`` computes now: it changes whenever that slot is
        (re)loaded or evicted, and for every name when the weights are changed in place by
        anything other than the bank (an optimizer step). ``None`` (the base) is constant."""
        if name is None:
            return ("base",)
        with self._lock:
            slot = self.slot(name)
            current = self._param_versions()
            loading = any(not f.done() for f in self._pending.values())
            if current != self._known_versions and not loading:
                self._epoch += 1
                self._known_versions = current
            return (slot, self._serial[slot], self._epoch)
