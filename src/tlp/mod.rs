//! PCIe Transaction Layer Packets (PCIe Base Specification, chapter 2).
