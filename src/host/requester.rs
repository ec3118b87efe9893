//! The host's requester is the shared one, [`crate::tlp::requester`] (tags, outstanding
//! requests, completion reassembly with the Byte Count / Lower Address checks of PCIe Base
//! §2.3.1.1, completion timeout §2.8, link-down failure); this module re-exports it and adds
//! what only the host knows: how a failed request looks to a vfio-user consumer.

pub use crate::tlp::requester::{
    CplAction, CplFault, CplInfo, CplStatus, Expect, RequestError, Requester, RequesterConfig,
    RequesterStats, StartError, TagSpace,
};

use crate::host::vfio_user::VfioDeviceError;

impl RequestError {
    /// Map to the vfio-user device error the consumer sees.
    pub fn to_device_error(self) -> VfioDeviceError {
        match self {
            Self::Timeout => VfioDeviceError::Timeout,
            Self::LinkDown | Self::Reset => VfioDeviceError::LinkDown,
            Self::UnsupportedRequest => VfioDeviceError::Completion("Unsupported Request"),
            Self::CompleterAbort => VfioDeviceError::Completion("Completer Abort"),
            Self::RetryStatus => VfioDeviceError::Completion("Configuration Retry Status"),
            Self::Poisoned => VfioDeviceError::Completion("poisoned completion"),
            Self::Malformed(_) => VfioDeviceError::Completion("malformed completion"),
            Self::InvalidRequest => VfioDeviceError::Completion("invalid request"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_error_maps_to_a_device_error() {
        use crate::host::vfio_user::VfioDeviceError as D;
        assert_eq!(RequestError::Timeout.to_device_error(), D::Timeout);
        assert_eq!(RequestError::LinkDown.to_device_error(), D::LinkDown);
        assert_eq!(
            RequestError::Malformed(CplFault::ByteCount).to_device_error(),
            D::Completion("malformed completion")
        );
        assert_eq!(
            RequestError::UnsupportedRequest.to_device_error().errno(),
            libc::EIO as u32
        );
    }
}
