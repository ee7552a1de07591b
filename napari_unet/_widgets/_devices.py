"""The device list of the Train, Predict and Batch widgets: this machine's devices."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QWidget

from ..devices import available_devices

AUTO = "auto"


class DeviceChoice(QComboBox):
    """auto, cpu, each CUDA device by index and name, mps: the devices that are here.

    An item shows its text ("cuda:1: NVIDIA H100"); its data is the value the engine
    takes ("cuda:1"), which :meth:`value` returns.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        for value, text in available_devices():
            self.addItem(text, value)
        self.setToolTip(
            "where the network runs: auto picks a CUDA card, then mps, then the CPU; "
            "cuda:<i> is that card"
        )

    def value(self) -> str:
        """The chosen device as the engine takes it: "auto", "cpu", "cuda:1", "mps"."""
        data = self.currentData()
        return data if isinstance(data, str) else AUTO

    def set_value(self, value: str) -> bool:
        """Choose ``value`` ("cuda:1", "cpu", …); one that is not listed here (another
        machine's card, an old "cuda") chooses auto.  Returns whether it was listed."""
        index = self.findData(str(value).strip().lower())
        self.setCurrentIndex(max(index, 0))
        return index >= 0
