//! The host's requester is the shared one, [`crate::tlp::requester`] (tags, outstanding
//! requests, completion reassembly with the Byte Count / Lower Address checks of PCIe Base
//! §2.3.1.1, completion timeout §2.8, link-down failure); this module re-exports it and adds
//! what only the host knows: how a failed request looks to a vfio-user consumer.

pub use crate::tlp::requester::{
    CplAction, CplFault, CplInfo, CplStatus, Expect, RequestError, Requester, RequesterConfig,
    RequesterStats, StartError, TagSpace,
};

use crate::host::vfio_user::VfioDeviceError;

/// How a failed request looks to the vfio-user consumer.
impl From<RequestError> for VfioDeviceError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Timeout => Self::Timeout,
            RequestError::LinkDown | RequestError::Reset => Self::LinkDown,
            RequestError::UnsupportedRequest => Self::Completion("Unsupported Request"),
            RequestError::CompleterAbort => Self::Completion("Completer Abort"),
            RequestError::RetryStatus => Self::Completion("Configuration Retry Status"),
            RequestError::Poisoned => Self::Completion("poisoned completion"),
            RequestError::Malformed(_) => Self::Completion("malformed completion"),
            RequestError::InvalidRequest => Self::Completion("invalid request"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_error_maps_to_a_device_error() {
        use crate::host::vfio_user::VfioDeviceError as D;
        assert_eq!(D::from(RequestError::Timeout), D::Timeout);
        assert_eq!(D::from(RequestError::LinkDown), D::LinkDown);
        assert_eq!(
            D::from(RequestError::Malformed(CplFault::ByteCount)),
            D::Completion("malformed completion")
        );
        assert_eq!(
            D::from(RequestError::UnsupportedRequest).errno(),
            libc::EIO as u32
        );
    }
}
