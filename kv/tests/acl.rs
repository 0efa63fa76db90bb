//! ACL users besides `default`: `AUTH name password` (and `HELLO 3 AUTH`), `ACL WHOAMI`,
//! a read-only user refused every write with `-NOPERM` (a `MULTI` holding one aborts),
//! wrong passwords refused with `-WRONGPASS`, and nothing served before `AUTH`.

mod common;

use common::{client, cmd, leads, Cluster};
use walship_engine::Durability;
use walship_kv::server::{Commands, Settings, User};

fn err(r: redis::RedisResult<redis::Value>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        // The client renders some codes its own way (`NoPerm:`): compared without case.
        Err(e) => e.to_string().to_lowercase(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_authenticate_and_a_read_only_one_cannot_write() {
    let c = Cluster::new(1);
    let settings = Settings {
        password: Some("adminpw".into()),
        users: vec![
            User {
                name: "reporting".into(),
                password: "readpw".into(),
                commands: Commands::Read,
            },
            User {
                name: "writer".into(),
                password: "writepw".into(),
                commands: Commands::All,
            },
        ],
        ..c.settings(Durability::Local)
    };
    let n1 = c.start_with("n1", settings).await;
    leads(&n1).await;
    client(n1.resp_addr(), false, |con| {
        assert!(err(cmd(&["GET", "k"]).query(con)).contains("noauth"));
        assert!(err(cmd(&["AUTH", "reporting", "writepw"]).query(con)).contains("wrongpass"));
        assert!(err(cmd(&["AUTH", "nobody", "readpw"]).query(con)).contains("wrongpass"));
        assert_eq!(
            cmd(&["AUTH", "reporting", "readpw"])
                .query::<String>(con)
                .unwrap(),
            "OK"
        );
        assert_eq!(
            cmd(&["ACL", "WHOAMI"]).query::<String>(con).unwrap(),
            "reporting"
        );
        assert_eq!(
            cmd(&["GET", "k"]).query::<Option<String>>(con).unwrap(),
            None
        );
        let e = err(cmd(&["SET", "k", "v"]).query(con));
        assert!(
            e.contains("noperm")
                && e.contains("user reporting has no permissions to run the 'set' command"),
            "{e}"
        );
        assert_eq!(cmd(&["MULTI"]).query::<String>(con).unwrap(), "OK");
        assert!(err(cmd(&["INCR", "n"]).query(con)).contains("noperm"));
        assert!(err(cmd(&["EXEC"]).query(con)).contains("execabort"));
        assert_eq!(
            cmd(&["AUTH", "writer", "writepw"])
                .query::<String>(con)
                .unwrap(),
            "OK"
        );
        assert_eq!(cmd(&["SET", "k", "v"]).query::<String>(con).unwrap(), "OK");
        assert_eq!(
            cmd(&["ACL", "WHOAMI"]).query::<String>(con).unwrap(),
            "writer"
        );
        // The default user, with and without its name.
        assert_eq!(
            cmd(&["AUTH", "adminpw"]).query::<String>(con).unwrap(),
            "OK"
        );
        assert_eq!(
            cmd(&["ACL", "WHOAMI"]).query::<String>(con).unwrap(),
            "default"
        );
        assert_eq!(
            cmd(&["AUTH", "default", "adminpw"])
                .query::<String>(con)
                .unwrap(),
            "OK"
        );
    })
    .await;
    // HELLO's AUTH, as clients that open with it do.
    client(n1.resp_addr(), false, |con| {
        let hello: redis::Value = cmd(&["HELLO", "3", "AUTH", "reporting", "readpw"])
            .query(con)
            .unwrap();
        assert!(
            format!("{hello:?}").contains("walship-kv") || format!("{hello:?}").contains("server"),
            "{hello:?}"
        );
        assert_eq!(cmd(&["GET", "k"]).query::<String>(con).unwrap(), "v");
        assert!(err(cmd(&["DEL", "k"]).query(con)).contains("noperm"));
    })
    .await;
    n1.shutdown().await;
}

#[test]
fn users_make_a_non_loopback_listener_acceptable() {
    let s = Settings {
        listen: "0.0.0.0:0".parse().unwrap(),
        users: vec![User {
            name: "app".into(),
            password: "pw".into(),
            commands: Commands::All,
        }],
        ..Settings::default()
    };
    assert_eq!(s.check(), Ok(()));
    let s = Settings {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..Settings::default()
    };
    assert!(s.check().is_err());
}
