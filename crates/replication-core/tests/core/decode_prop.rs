//! Property tests of the decoders of replication data from other processes
//! (`protocol::decode`: replication messages, view-service pings and answers): whatever
//! the bytes, an error or a value, never a panic, and never an allocation the input does
//! not pay for.
use bookstore_replication_core::protocol::{decode, Entry, Epoch, Msg, SnapshotMeta, View};
use bookstore_replication_core::viewservice::Ping;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes each thread asks the allocator for.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + layout.size()));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes this thread allocated while running `f`.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (out, ALLOCATED.with(Cell::get) - before)
}

fn view() -> impl Strategy<Value = View> {
    (
        any::<u64>(),
        0u32..5,
        proptest::collection::vec(0u32..5, 0..4),
    )
        .prop_map(|(epoch, primary, backups)| View {
            epoch,
            primary,
            backups,
        })
}

fn msg() -> impl Strategy<Value = Msg> {
    let entry = (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(index, epoch, data)| Entry { index, epoch, data });
    prop_oneof![
        (
            view(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(entry, 0..4),
            any::<u64>()
        )
            .prop_map(
                |(view, prev_index, prev_epoch, entries, commit)| Msg::Replicate {
                    view,
                    prev_index,
                    prev_epoch,
                    entries,
                    commit
                }
            ),
        (
            view(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(view, index, epoch, data)| Msg::Snapshot {
                view,
                meta: SnapshotMeta { index, epoch },
                data
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(epoch, matched)| Msg::Ack { epoch, matched }),
        (any::<u64>(), any::<u64>()).prop_map(|(epoch, commit)| Msg::Nack { epoch, commit }),
        view().prop_map(|view| Msg::Reject { view }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Vec<Msg>>(&bytes);
        let _ = decode::<Ping>(&bytes);
        let _ = decode::<(Option<View>, Epoch)>(&bytes);
    }

    #[test]
    fn messages_round_trip(msgs in proptest::collection::vec(msg(), 0..6)) {
        let bytes = bincode::serialize(&msgs).unwrap();
        prop_assert_eq!(decode::<Vec<Msg>>(&bytes).unwrap(), msgs);
    }

    #[test]
    fn damaged_messages_never_panic(
        msgs in proptest::collection::vec(msg(), 1..4),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = bincode::serialize(&msgs).unwrap();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode::<Vec<Msg>>(&bytes);
        // A truncated message is an error, never a partial value.
        let good = bincode::serialize(&msgs).unwrap();
        let short = &good[..cut.index(good.len())];
        prop_assert!(decode::<Vec<Msg>>(short).is_err());
    }

    #[test]
    fn pings_round_trip(from in 0u32..9, incarnation in any::<u64>(), epoch in any::<u64>(),
                        applied in any::<u64>(), synced in proptest::collection::vec(0u32..9, 0..4),
                        fence in any::<u64>()) {
        let p = Ping { from, incarnation, epoch, applied, synced, fence };
        prop_assert_eq!(decode::<Ping>(&bincode::serialize(&p).unwrap()).unwrap(), p);
    }
}

#[test]
fn a_huge_length_prefix_is_an_error_not_an_allocation() {
    const BUDGET: usize = 4 << 20;
    // A Vec<Msg> claiming 2^62 messages.
    let mut bytes = (1u64 << 62).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[1, 0, 0, 0]);
    let (r, used) = allocated_by(|| decode::<Vec<Msg>>(&bytes));
    assert!(r.is_err());
    assert!(used < BUDGET, "{used} bytes allocated");
    // A snapshot claiming a 2^62-byte payload.
    let snapshot = Msg::Snapshot {
        view: View {
            epoch: 1,
            primary: 0,
            backups: vec![],
        },
        meta: SnapshotMeta::default(),
        data: vec![7; 4],
    };
    let mut bytes = bincode::serialize(&vec![snapshot]).unwrap();
    let n = bytes.len();
    bytes[n - 12..n - 4].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let (r, used) = allocated_by(|| decode::<Vec<Msg>>(&bytes));
    assert!(r.is_err());
    assert!(used < BUDGET, "{used} bytes allocated");
    // A ping whose `synced` list claims 2^62 ids.
    let mut bytes = vec![0u8; 4 + 8 * 3];
    bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let (r, used) = allocated_by(|| decode::<Ping>(&bytes));
    assert!(r.is_err());
    assert!(used < BUDGET, "{used} bytes allocated");
    // Trailing bytes are refused too.
    let mut bytes = bincode::serialize(&Vec::<Msg>::new()).unwrap();
    bytes.push(0);
    assert!(decode::<Vec<Msg>>(&bytes).is_err());
}
