//! PCI Express capability (PCIe Base 4.0 §7.5.3): device, link, slot and root registers for
//! endpoints and for root / downstream ports with a hot-plug slot (§6.7 hot-plug events).

use super::{cap_boilerplate, CapEvent, Capability, CapabilityId};
use crate::pci::regs::RegisterBlock;
use crate::pci::spec::{cap_id, exp};

/// Device/Port Type field of the PCI Express Capabilities register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortType {
    /// PCI Express Endpoint.
    Endpoint,
    /// Legacy PCI Express Endpoint.
    LegacyEndpoint,
    /// Root Port of a Root Complex.
    RootPort,
    /// Upstream port of a switch.
    UpstreamPort,
    /// Downstream port of a switch.
    DownstreamPort,
    /// Root Complex Integrated Endpoint.
    RcIntegrated,
    /// Any other encoding (bridges, event collectors).
    Other(u8),
}

impl PortType {
    fn code(self) -> u8 {
        match self {
            PortType::Endpoint => exp::TYPE_ENDPOINT,
            PortType::LegacyEndpoint => exp::TYPE_LEGACY_ENDPOINT,
            PortType::RootPort => exp::TYPE_ROOT_PORT,
            PortType::UpstreamPort => exp::TYPE_UPSTREAM_PORT,
            PortType::DownstreamPort => exp::TYPE_DOWNSTREAM_PORT,
            PortType::RcIntegrated => exp::TYPE_RC_INTEGRATED,
            PortType::Other(c) => c & 0xf,
        }
    }
    fn from_code(c: u8) -> Self {
        match c {
            exp::TYPE_ENDPOINT => PortType::Endpoint,
            exp::TYPE_LEGACY_ENDPOINT => PortType::LegacyEndpoint,
            exp::TYPE_ROOT_PORT => PortType::RootPort,
            exp::TYPE_UPSTREAM_PORT => PortType::UpstreamPort,
            exp::TYPE_DOWNSTREAM_PORT => PortType::DownstreamPort,
            exp::TYPE_RC_INTEGRATED => PortType::RcIntegrated,
            c => PortType::Other(c),
        }
    }
    /// Root ports and switch downstream ports (the ones that can have a slot).
    pub fn is_downstream(self) -> bool {
        matches!(self, PortType::RootPort | PortType::DownstreamPort)
    }
}

/// Slot Capabilities of a hot-plug capable downstream port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotConfig {
    /// Physical Slot Number.
    pub physical_slot: u16,
    /// Attention Button Present.
    pub attention_button: bool,
    /// Power Controller Present.
    pub power_controller: bool,
    /// Attention and Power Indicators Present.
    pub indicators: bool,
    /// Hot-Plug Surprise (the card may go without warning).
    pub surprise: bool,
    /// No Command Completed Support (slot commands take effect at once, no CC event).
    pub no_command_completed: bool,
}

impl Default for SlotConfig {
    fn default() -> Self {
        Self {
            physical_slot: 1,
            attention_button: true,
            power_controller: false,
            indicators: true,
            surprise: true,
            no_command_completed: false,
        }
    }
}

/// What goes in the read-only capability registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpressConfig {
    /// Device/Port type.
    pub port_type: PortType,
    /// Max_Payload_Size Supported, in bytes (128 … 4096).
    pub max_payload_supported: u16,
    /// Function Level Reset capability (endpoints).
    pub flr: bool,
    /// Extended (8-bit) Tag Field Supported.
    pub extended_tag: bool,
    /// 10-Bit Tag Completer Supported.
    pub ten_bit_tag_completer: bool,
    /// 10-Bit Tag Requester Supported.
    pub ten_bit_tag_requester: bool,
    /// Max Link Speed code (1 = 2.5 GT/s, 2 = 5, 3 = 8, 4 = 16 GT/s).
    pub link_speed: u8,
    /// Maximum Link Width (lanes).
    pub link_width: u8,
    /// Port Number.
    pub port_number: u8,
    /// A hot-plug slot (downstream ports only).
    pub slot: Option<SlotConfig>,
}

impl Default for ExpressConfig {
    /// A Gen3 x4 endpoint, MPS 512, FLR, extended and 10-bit tags.
    fn default() -> Self {
        Self {
            port_type: PortType::Endpoint,
            max_payload_supported: 512,
            flr: true,
            extended_tag: true,
            ten_bit_tag_completer: true,
            ten_bit_tag_requester: true,
            link_speed: 3,
            link_width: 4,
            port_number: 0,
            slot: None,
        }
    }
}

impl ExpressConfig {
    /// A root port with a hot-plug slot, Gen3 x4.
    pub fn root_port(port_number: u8, slot: SlotConfig) -> Self {
        Self {
            port_type: PortType::RootPort,
            flr: false,
            port_number,
            slot: Some(slot),
            ..Self::default()
        }
    }
}

fn size_code(bytes: u16) -> u16 {
    (bytes.clamp(128, 4096).next_power_of_two() / 128).trailing_zeros() as u16
}

/// The PCI Express capability (version 2 layout).
#[derive(Clone, Debug)]
pub struct PciExpressCap {
    regs: RegisterBlock,
}

impl PciExpressCap {
    /// Builds the capability from `cfg`.
    pub fn new(cfg: ExpressConfig) -> Self {
        let mut r = RegisterBlock::new(exp::LEN_V2);
        let slot = cfg.slot.filter(|_| cfg.port_type.is_downstream());
        let mut flags = 2 | ((cfg.port_type.code() as u16) << exp::FLAGS_TYPE_SHIFT);
        if slot.is_some() {
            flags |= exp::FLAGS_SLOT_IMPLEMENTED;
        }
        r.init(exp::FLAGS, 2, flags as u64);
        let mut devcap = size_code(cfg.max_payload_supported) as u32 | exp::DEVCAP_RBE;
        if cfg.extended_tag {
            devcap |= exp::DEVCAP_EXT_TAG;
        }
        if cfg.flr && !cfg.port_type.is_downstream() {
            devcap |= exp::DEVCAP_FLR;
        }
        r.init(exp::DEVCAP, 4, devcap as u64);
        // Reset defaults: MPS 128, MRRS 512, relaxed ordering and no-snoop enabled.
        let devctl =
            (2 << exp::DEVCTL_MRRS_SHIFT) | exp::DEVCTL_RELAXED_ORDERING | exp::DEVCTL_NO_SNOOP;
        r.init(exp::DEVCTL, 2, devctl as u64);
        let speed = cfg.link_speed.clamp(1, 5) as u32;
        let width = cfg.link_width.clamp(1, 32) as u32;
        let mut lnkcap = speed
            | (width << exp::LNKCAP_WIDTH_SHIFT)
            | ((cfg.port_number as u32) << exp::LNKCAP_PORT_SHIFT);
        if cfg.port_type.is_downstream() {
            lnkcap |= exp::LNKCAP_DLLLA_REPORTING;
        }
        r.init(exp::LNKCAP, 4, lnkcap as u64);
        let lnksta = speed | (width << exp::LNKCAP_WIDTH_SHIFT);
        r.init(exp::LNKSTA, 2, lnksta as u64);
        if let Some(s) = slot {
            let mut c =
                (s.physical_slot as u32 & 0x1fff) << exp::SLTCAP_PSN_SHIFT | exp::SLTCAP_HP_CAPABLE;
            for (on, bit) in [
                (s.attention_button, exp::SLTCAP_ATTN_BUTTON),
                (s.power_controller, exp::SLTCAP_POWER_CTRL),
                (s.indicators, exp::SLTCAP_ATTN_IND | exp::SLTCAP_PWR_IND),
                (s.surprise, exp::SLTCAP_HP_SURPRISE),
                (s.no_command_completed, exp::SLTCAP_NO_CMD_COMPLETED),
            ] {
                if on {
                    c |= bit;
                }
            }
            r.init(exp::SLTCAP, 4, c as u64);
        }
        let mut devcap2 = 0x1f; // completion timeout ranges A-D, disable supported
        if cfg.port_type.is_downstream() {
            devcap2 |= exp::DEVCAP2_ARI_FORWARDING;
        }
        if cfg.ten_bit_tag_completer {
            devcap2 |= exp::DEVCAP2_10BIT_TAG_COMPLETER;
        }
        if cfg.ten_bit_tag_requester {
            devcap2 |= exp::DEVCAP2_10BIT_TAG_REQUESTER;
        }
        r.init(exp::DEVCAP2, 4, devcap2 as u64);
        let speeds = (1u32 << (speed + 1)) - 2; // supported link speeds vector, bits 1..=speed
        r.init(exp::LNKCAP2, 4, speeds as u64);
        r.init(exp::LNKCTL2, 2, speed as u64);
        Self::with_masks(r)
    }

    /// From a real card's bytes (replay): the flags register decides type, slot and length.
    pub fn from_image(image: &[u8]) -> Self {
        let version = image.get(2).copied().unwrap_or(0) & 0xf;
        let len = if version >= 2 {
            exp::LEN_V2
        } else {
            exp::LEN_V1
        };
        let mut r = RegisterBlock::new(len);
        r.load(0, &image[..image.len().min(len)]);
        Self::with_masks(r)
    }

    fn with_masks(mut r: RegisterBlock) -> Self {
        let flags = r.u16(exp::FLAGS);
        let ty =
            PortType::from_code(((flags & exp::FLAGS_TYPE_MASK) >> exp::FLAGS_TYPE_SHIFT) as u8);
        let downstream = ty.is_downstream();
        // Initiate FLR is never stored (reads 0); Bridge Configuration Retry Enable is RW.
        r.set_rw(exp::DEVCTL, 2, if downstream { 0xffff } else { 0x7fff });
        r.set_w1c(exp::DEVSTA, 2, exp::DEVSTA_RW1C as u64);
        // Link Control: Retrain Link always reads 0; link disable only on downstream ports.
        r.set_rw(exp::LNKCTL, 2, if downstream { 0x0fd3 } else { 0x0fcb });
        if downstream {
            r.set_w1c(exp::LNKSTA, 2, exp::LNKSTA_RW1C as u64);
        }
        if flags & exp::FLAGS_SLOT_IMPLEMENTED != 0 {
            r.set_rw(exp::SLTCTL, 2, exp::SLTCTL_WRITABLE as u64);
            r.set_w1c(exp::SLTSTA, 2, exp::SLTSTA_RW1C as u64);
        }
        if ty == PortType::RootPort {
            r.set_rw(exp::RTCTL, 2, 0x001f);
            r.set_w1c(exp::RTSTA, 4, exp::RTSTA_PME as u64);
        }
        if r.len() >= exp::LEN_V2 {
            r.set_rw(exp::DEVCTL2, 2, exp::DEVCTL2_WRITABLE as u64);
            r.set_rw(exp::LNKCTL2, 2, 0xffff);
        }
        Self { regs: r }
    }

    /// Device/Port type.
    pub fn port_type(&self) -> PortType {
        PortType::from_code(
            ((self.regs.u16(exp::FLAGS) & exp::FLAGS_TYPE_MASK) >> exp::FLAGS_TYPE_SHIFT) as u8,
        )
    }
    /// Function Level Reset supported.
    pub fn flr_supported(&self) -> bool {
        self.regs.u32(exp::DEVCAP) & exp::DEVCAP_FLR != 0
    }
    /// Max Payload Size the driver programmed, in bytes.
    pub fn max_payload_size(&self) -> usize {
        128 << ((self.regs.u16(exp::DEVCTL) & exp::DEVCTL_MPS_MASK) >> exp::DEVCTL_MPS_SHIFT).min(5)
    }
    /// Max Read Request Size the driver programmed, in bytes.
    pub fn max_read_request_size(&self) -> usize {
        128 << ((self.regs.u16(exp::DEVCTL) & exp::DEVCTL_MRRS_MASK) >> exp::DEVCTL_MRRS_SHIFT)
            .min(5)
    }
    /// Extended Tag Field Enable (8-bit tags).
    pub fn extended_tag_enabled(&self) -> bool {
        self.regs.u16(exp::DEVCTL) & exp::DEVCTL_EXT_TAG != 0
    }
    /// 10-Bit Tag Requester Enable (Device Control 2).
    pub fn ten_bit_tag_requester_enabled(&self) -> bool {
        self.regs.u32(exp::DEVCAP2) & exp::DEVCAP2_10BIT_TAG_REQUESTER != 0
            && self.regs.u16(exp::DEVCTL2) & exp::DEVCTL2_10BIT_TAG_REQUESTER != 0
    }
    /// Device side: records an error in Device Status (bit 0 correctable, 1 non-fatal,
    /// 2 fatal, 3 unsupported request).
    pub fn report_device_error(&mut self, bits: u16) {
        self.regs.set_bits16(exp::DEVSTA, bits & exp::DEVSTA_RW1C);
    }

    /// Slot Status register.
    pub fn slot_status(&self) -> u16 {
        self.regs.u16(exp::SLTSTA)
    }
    /// Slot Control register.
    pub fn slot_control(&self) -> u16 {
        self.regs.u16(exp::SLTCTL)
    }
    /// Link Status register.
    pub fn link_status(&self) -> u16 {
        self.regs.u16(exp::LNKSTA)
    }
    fn has_slot(&self) -> bool {
        self.regs.u16(exp::FLAGS) & exp::FLAGS_SLOT_IMPLEMENTED != 0
    }

    /// Root port side: a card appeared in / left the slot. Updates Presence Detect State,
    /// sets Presence Detect Changed, and moves the link (Data Link Layer Link Active plus
    /// its Changed bit). Returns true when a hot-plug interrupt is now due.
    pub fn set_presence(&mut self, present: bool) -> bool {
        if !self.has_slot() {
            return false;
        }
        let was = self.slot_status() & exp::SLTSTA_PRESENCE != 0;
        if was != present {
            if present {
                self.regs.set_bits16(exp::SLTSTA, exp::SLTSTA_PRESENCE);
            } else {
                self.regs.clear_bits16(exp::SLTSTA, exp::SLTSTA_PRESENCE);
            }
            self.regs
                .set_bits16(exp::SLTSTA, exp::SLTSTA_PRESENCE_CHANGED);
        }
        self.set_link_active(present);
        self.hotplug_interrupt_pending()
    }

    /// Root port side: Data Link Layer Link Active changed (sets the DLL State Changed bit
    /// when it did). Returns true when a hot-plug interrupt is now due.
    pub fn set_link_active(&mut self, active: bool) -> bool {
        let was = self.link_status() & exp::LNKSTA_DLL_ACTIVE != 0;
        if was != active {
            if active {
                self.regs.set_bits16(exp::LNKSTA, exp::LNKSTA_DLL_ACTIVE);
            } else {
                self.regs.clear_bits16(exp::LNKSTA, exp::LNKSTA_DLL_ACTIVE);
            }
            if self.has_slot() {
                self.regs.set_bits16(exp::SLTSTA, exp::SLTSTA_DLLSC);
            }
        }
        self.hotplug_interrupt_pending()
    }

    /// Root port side: the operator pressed the Attention Button (the orderly-removal
    /// request). Returns true when a hot-plug interrupt is now due.
    pub fn press_attention_button(&mut self) -> bool {
        if !self.has_slot() {
            return false;
        }
        self.regs.set_bits16(exp::SLTSTA, exp::SLTSTA_ATTN_BUTTON);
        self.hotplug_interrupt_pending()
    }

    /// True when Hot-Plug Interrupt Enable is set and an enabled slot event is pending.
    pub fn hotplug_interrupt_pending(&self) -> bool {
        let ctl = self.slot_control();
        let sta = self.slot_status();
        if ctl & exp::SLTCTL_HP_INT_EN == 0 {
            return false;
        }
        let events = [
            (exp::SLTCTL_ATTN_BUTTON_EN, exp::SLTSTA_ATTN_BUTTON),
            (1 << 1, exp::SLTSTA_POWER_FAULT),
            (1 << 2, exp::SLTSTA_MRL_CHANGED),
            (exp::SLTCTL_PRESENCE_EN, exp::SLTSTA_PRESENCE_CHANGED),
            (exp::SLTCTL_CMD_COMPLETED_EN, exp::SLTSTA_CMD_COMPLETED),
            (exp::SLTCTL_DLLSC_EN, exp::SLTSTA_DLLSC),
        ];
        events
            .iter()
            .any(|&(en, st)| ctl & en != 0 && sta & st != 0)
    }
}

fn touches(offset: usize, len: usize, reg: usize, reg_len: usize) -> bool {
    offset < reg + reg_len && reg < offset + len
}

impl Capability for PciExpressCap {
    fn id(&self) -> CapabilityId {
        CapabilityId::Standard(cap_id::PCI_EXPRESS)
    }
    fn name(&self) -> &'static str {
        "PCI Express"
    }
    fn on_write(&mut self, offset: usize, data: &[u8]) -> CapEvent {
        let mut ev = CapEvent::default();
        // Initiate FLR: bit 15 of Device Control, i.e. bit 7 of its high byte.
        let hi = exp::DEVCTL + 1;
        if offset <= hi && hi < offset + data.len() {
            let b = data[hi - offset];
            if b & 0x80 != 0 && !self.port_type().is_downstream() && self.flr_supported() {
                ev.function_level_reset = true;
            }
        }
        if self.has_slot() && touches(offset, data.len(), exp::SLTCTL, 2) {
            ev.slot_command = true;
            if self.regs.u32(exp::SLTCAP) & exp::SLTCAP_NO_CMD_COMPLETED == 0 {
                self.regs.set_bits16(exp::SLTSTA, exp::SLTSTA_CMD_COMPLETED);
            }
        }
        ev
    }
    cap_boilerplate!();
}
