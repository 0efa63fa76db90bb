//! Plain TCP throughput, one connection: the reference for what the kernel moves between
//! two processes on the same path without QUIC's user-space packet work and encryption.
//!
//! The sender writes every frame with `write_all` and shuts its half down; the receiver
//! reads into one 256 KiB buffer until the end of the stream. Throughput is measured at
//! the receiver, from the accepted connection to the end of the stream.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

use bytes::Bytes;

use crate::rawquic::Received;

/// Writes `frames` to `stream`, shuts the write half down and waits for the receiver to
/// close its end (so the sender's time covers delivery).
pub fn send(mut stream: TcpStream, frames: &[Bytes]) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    for f in frames {
        stream.write_all(f)?;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 16];
    while stream.read(&mut rest)? > 0 {}
    Ok(())
}

/// Accepts one connection on `listener` and reads it to its end.
pub fn receive(listener: &TcpListener) -> std::io::Result<Received> {
    let (mut stream, _) = listener.accept()?;
    let start_ns = crate::child::mono_ns();
    let mut buf = vec![0u8; 256 << 10];
    let mut bytes = 0u64;
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => bytes += n as u64,
        }
    }
    let end_ns = crate::child::mono_ns();
    Ok(Received {
        bytes,
        start_ns,
        end_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_every_byte_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rx = std::thread::spawn(move || receive(&listener));
        let frames: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; 100_000])).collect();
        send(TcpStream::connect(addr).unwrap(), &frames).unwrap();
        let got = rx.join().unwrap().unwrap();
        assert_eq!(got.bytes, 4_000_000);
        assert!(got.end_ns >= got.start_ns);
    }
}
