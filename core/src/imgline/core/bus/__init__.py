"""The bus: consumer harness, confirmed publishing, topology, dead-lettering and metrics."""

from imgline.core.bus.consumer import Consumer
from imgline.core.bus.metrics import BusMetrics
from imgline.core.bus.publisher import Publisher

__all__ = ["BusMetrics", "Consumer", "Publisher"]
