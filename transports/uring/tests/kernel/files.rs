//! Files: reads and writes, vectored and plain; open, fsync, statx, close; fallocate; registered files; errors.

use super::*;

#[test]
fn write_then_read_back_plain_and_vectored() {
    let dir = TempDir::new("rw");
    let file = open(&dir.file("data"));
    let fd = target(&file);
    let mut ring = Uring::builder().build().unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();

    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::Write {
                fd: fd.clone(),
                buf: data.clone(),
                offset: 0,
            },
        )],
    );
    assert_eq!(done[0].result.as_ref().unwrap(), &(data.len() as u32));
    assert_eq!(
        buf(&done[0].output),
        &data[..],
        "the write hands its buffer back"
    );

    let done = run(
        &mut ring,
        vec![sub(
            2,
            Op::Read {
                fd: fd.clone(),
                buf: vec![0; 20_000],
                offset: 0,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 10_000);
    assert_eq!(
        buf(&done[0].output),
        &data[..],
        "read truncated to what was read"
    );

    let parts = vec![b"abc".to_vec(), b"defgh".to_vec(), b"ij".to_vec()];
    let done = run(
        &mut ring,
        vec![sub(
            3,
            Op::Writev {
                fd: fd.clone(),
                bufs: parts,
                offset: 20_000,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 10);
    let done = run(
        &mut ring,
        vec![sub(
            4,
            Op::Readv {
                fd: fd.clone(),
                bufs: vec![vec![0; 4], vec![0; 4], vec![0; 4]],
                offset: 20_000,
            },
        )],
    );
    match &done[0].output {
        Output::Bufs(b) => assert_eq!(b, &[b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_write_fsync_statx_close() {
    let dir = TempDir::new("open");
    let path = CString::new(dir.file("new").to_str().unwrap()).unwrap();
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::OpenAt {
                dir: None,
                path: path.clone(),
                flags: libc::O_CREAT | libc::O_RDWR,
                mode: 0o600,
            },
        )],
    );
    let Output::Fd(file) = done.into_iter().next().unwrap().output else {
        panic!("openat returns its descriptor owned");
    };
    let fd = file.as_raw_fd();
    let t = target(&file);
    let done = run(
        &mut ring,
        vec![
            sub(
                2,
                Op::Write {
                    fd: t.clone(),
                    buf: vec![9; 12345],
                    offset: 0,
                },
            )
            .link(Link::Soft),
            sub(
                3,
                Op::Fsync {
                    fd: t,
                    datasync: false,
                },
            )
            .link(Link::Soft),
            sub(
                4,
                Op::Statx {
                    dir: None,
                    path,
                    flags: 0,
                    mask: libc::STATX_SIZE,
                },
            ),
        ],
    );
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    match &done[2].output {
        Output::Statx(st) => assert_eq!(st.stx_size, 12345),
        other => panic!("{other:?}"),
    }
    // The write and fsync have completed: the duplicates they held are closed.
    let opened = identity(fd).expect("the open file");
    let done = run(&mut ring, vec![sub(5, Op::Close { fd: file.into() })]);
    assert!(done[0].result.is_ok());
    // The number is closed, or (tests run on several threads) already reused by another test
    // for another file: it no longer names the file this test opened.
    assert_ne!(
        identity(fd),
        Some(opened),
        "the descriptor still names the file"
    );
}

#[test]
fn errors_name_the_operation() {
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            77,
            Op::Read {
                fd: target(&std::fs::File::open(std::env::temp_dir()).unwrap()),
                buf: vec![0; 8],
                offset: 0,
            },
        )],
    );
    let err = done[0].result.as_ref().unwrap_err();
    // A directory cannot be read.
    assert_eq!(
        err.kind(),
        std::io::Error::from_raw_os_error(libc::EISDIR).kind()
    );
    let op = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<OpError>())
        .expect("an OpError inside");
    assert_eq!((op.op, op.token), ("read", 77));
    assert_eq!(op.source.raw_os_error(), Some(libc::EISDIR));
    // The outer error reads as the operation's own.
    assert_eq!(err.to_string(), op.to_string());
    // The buffer still comes back.
    assert_eq!(buf(&done[0].output).len(), 0);
}

#[test]
fn registered_files() {
    let dir = TempDir::new("files");
    let file = open(&dir.file("data"));
    let mut ring = Uring::builder().build().unwrap();
    ring.register_files(&[&file]).unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::Write {
                fd: Target::Fixed(0),
                buf: b"via slot 0".to_vec(),
                offset: 0,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 10);
    assert_eq!(std::fs::read(dir.file("data")).unwrap(), b"via slot 0");
    let r = ring
        .push(sub(
            2,
            Op::Fsync {
                fd: Target::Fixed(1),
                datasync: true,
            },
        ))
        .unwrap_err();
    assert!(
        matches!(
            refusal(&r.error),
            SubmitError::FileOutOfRange {
                index: 1,
                registered: 1
            }
        ),
        "{}",
        r.error
    );
}

/// `fallocate` punches a hole (a discard) and the range reads back as zeroes.
#[test]
fn fallocate_punches_a_hole() {
    let dir = TempDir::new("falloc");
    let path = dir.file("data");
    std::fs::write(&path, vec![0xAAu8; 16384]).unwrap();
    let file = open_existing(&path);
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::Fallocate {
                fd: target(&file),
                offset: 4096,
                len: 8192,
                mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            },
        )],
    );
    match &done[0].result {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("skipping: the temporary directory's file system cannot punch holes");
            return;
        }
        r => assert_eq!(*r.as_ref().unwrap(), 0),
    }
    let back = std::fs::read(&path).unwrap();
    assert_eq!(back.len(), 16384);
    assert!(back[..4096].iter().all(|b| *b == 0xAA));
    assert!(back[4096..12288].iter().all(|b| *b == 0));
    assert!(back[12288..].iter().all(|b| *b == 0xAA));
}
