use bytes::Bytes;
use volley_tests::*;

#[test]
fn tcp_smoke() {
    for b in BACKENDS {
        let sink = TcpSink::start();
        let mut e = engine(b);
        let id = e.register_tcp(sink.connect()).unwrap();
        let mut expect = Vec::new();
        for i in 0..5000u32 {
            let m = format!("msg {i};");
            expect.extend_from_slice(m.as_bytes());
            e.send(id, Bytes::from(m)).unwrap();
        }
        let r = e.flush(id).unwrap();
        assert_eq!(r.writes, 5000);
        eprintln!(
            "{:?}: transitions {} sqes {}",
            e.backend(),
            e.stats().kernel_transitions,
            e.stats().sqes
        );
        let (_, fd) = e.close(id).unwrap();
        drop(fd);
        assert_eq!(sink.finish(), expect);
    }
}
