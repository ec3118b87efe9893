//! Unit tests of the NVMe driver's pure parts: Identify parsing over the shared structures
//! (including arbitrary bytes from the card) and PRP construction.

use super::*;
use proptest::prelude::*;

fn pages(nsze: u64, lbads: u8, mdts: u8) -> (Vec<u8>, Vec<u8>) {
    let mut c = IdentifyController::new_zeroed();
    c.vid.set(0x1b36);
    c.sn.copy_from_slice(b"SERIAL01            ");
    c.mn.fill(b' ');
    c.mn[..5].copy_from_slice(b"MODEL");
    c.fr.copy_from_slice(b"1.0     ");
    c.mdts = mdts;
    let mut n = IdentifyNamespace::new_zeroed();
    n.nsze.set(nsze);
    n.flbas = 1; // LBA format 1
    n.lbaf[1].lbads = lbads;
    (c.as_bytes().to_vec(), n.as_bytes().to_vec())
}

#[test]
fn identify_fields() {
    let (c, n) = pages(2048, 12, 3);
    let i = parse_identify(&c, &n).unwrap();
    assert_eq!(
        (i.vid, i.serial.as_str(), i.model.as_str()),
        (0x1b36, "SERIAL01", "MODEL")
    );
    assert_eq!(
        (i.blocks, i.block_size, i.max_transfer),
        (2048, 4096, 32 * 1024)
    );
    let (c, n) = pages(2048, 8, 0);
    assert!(matches!(
        parse_identify(&c, &n),
        Err(NvmeError::Unsupported(Unsupported::Namespace {
            blocks: 2048,
            lbads: 8
        }))
    ));
    assert!(matches!(
        parse_identify(&c[..100], &n),
        Err(NvmeError::Unsupported(Unsupported::IdentifySize {
            cns: cns::CONTROLLER,
            len: 100
        }))
    ));
    assert!(matches!(
        parse_identify(&c, &n[..IDENTIFY_SIZE - 1]),
        Err(NvmeError::Unsupported(Unsupported::IdentifySize {
            cns: cns::NAMESPACE,
            len: 4095
        }))
    ));
}

#[test]
fn prps_for_one_two_and_many_pages() {
    let mem = DmaBuffer::new(8 * PAGE);
    let mut s = Sqe::read(1, 0, 1);
    set_prps(&mem, &mut s, 0x1000, 512, 0).unwrap();
    assert_eq!((s.prp1.get(), s.prp2.get()), (IOVA + 0x1000, 0));
    set_prps(&mem, &mut s, 0x1000, 2 * PAGE, 0).unwrap();
    assert_eq!((s.prp1.get(), s.prp2.get()), (IOVA + 0x1000, IOVA + 0x2000));
    set_prps(&mem, &mut s, 0x1000, 3 * PAGE + 1, 0).unwrap();
    assert_eq!((s.prp1.get(), s.prp2.get()), (IOVA + 0x1000, IOVA));
    let mut list = [0u8; 24];
    mem.read_at(0, &mut list).unwrap();
    let e = |i: usize| u64::from_le_bytes(list[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(
        (e(0), e(1), e(2)),
        (IOVA + 0x2000, IOVA + 0x3000, IOVA + 0x4000)
    );
}

proptest! {
    #[test]
    fn any_identify_pages_parse_or_fail_cleanly(
        c in proptest::collection::vec(any::<u8>(), 0..4200),
        n in proptest::collection::vec(any::<u8>(), 0..4200),
    ) {
        if let Ok(i) = parse_identify(&c, &n) {
            prop_assert!(i.blocks > 0);
            prop_assert!((512..=4096).contains(&i.block_size));
            prop_assert!(i.max_transfer >= PAGE && i.max_transfer <= MAX_TRANSFER);
        }
    }
}
