//! Zero-copy sends (`IORING_OP_SEND_ZC`/`SENDMSG_ZC`) on real sockets. io_uring only: epoll has
//! no zero-copy send (an epoll engine ignores the threshold; `epoll_ignores_threshold` checks).

use bytes::Bytes;
use volley::{Backend, Engine};
use volley_tests::{assert_bytes_eq, payload, TcpSink};

fn zc_engine(threshold: usize) -> Engine {
    Engine::builder()
        .backend(Backend::Uring)
        .zerocopy_threshold(Some(threshold))
        .build()
        .expect("io_uring engine")
}

/// Loopback: the kernel copies every zero-copy send (the receiving socket cannot keep user
/// pages) and says so in the notification; the engine then sends copying on that socket.
#[test]
fn loopback_reports_copied_and_socket_goes_back_to_copying() {
    let mut e = zc_engine(16 << 10);
    assert!(
        e.uring_features().is_enabled("send_zc"),
        "send_zc not in effect: {:?}",
        e.uring_features()
    );
    let sink = TcpSink::start();
    let s = e.register_tcp(sink.connect()).unwrap();
    let data = payload(1, 64 << 20);
    let bytes = Bytes::from(data.clone());
    for i in 0..256 {
        e.send(s, bytes.slice(i * (256 << 10)..(i + 1) * (256 << 10)))
            .unwrap();
        if i % 16 == 15 {
            e.flush(s).unwrap();
        }
    }
    e.flush(s).unwrap();
    let st = e.stats().clone();
    drop(e);
    let got = sink.finish();
    assert_bytes_eq(&got, &data, "loopback zc");
    eprintln!(
        "zc_sends {} notifs {} copied {} fallbacks {}",
        st.zc_sends, st.zc_notifications, st.zc_copied, st.zc_fallbacks
    );
    assert!(st.zc_sends >= 1);
    assert_eq!(
        st.zc_copied, 1,
        "the first notification reports copied; then no more ZC"
    );
    assert_eq!(st.zc_sends, st.zc_notifications);
}
