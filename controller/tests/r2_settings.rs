//! The object store client with the settings `transcoder serve` uses for Cloudflare R2 (region
//! `auto`, path-style addressing, checksums only where an operation requires them), run against
//! the embedded S3-compatible store on loopback.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use controller::objectstore::{EmbeddedObjectStore, ObjectStore, ObjectUrl, StoreSettings};
use protocol::PresignedRequest;

const BUCKET: &str = "media";
const EXPIRY: Duration = Duration::from_secs(600);
/// Every S3 implementation accepts parts of 5 MiB; only the last part may be smaller.
const PART_BYTES: usize = 5 * 1024 * 1024;

/// The embedded store and a client configured as for R2.
struct R2Fixture {
    _root: tempfile::TempDir,
    server: EmbeddedObjectStore,
    objects: ObjectStore,
}

impl R2Fixture {
    async fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback listener");
        let server = EmbeddedObjectStore::start(listener, &root.path().join("objects"), BUCKET)
            .await
            .expect("embedded store starts");

        let embedded = server.settings();
        let settings = StoreSettings {
            endpoint: embedded.endpoint.clone(),
            region: "auto".to_owned(),
            access_key_id: embedded.access_key_id.clone(),
            secret_access_key: embedded.secret_access_key.clone(),
            default_bucket: BUCKET.to_owned(),
        };
        Self {
            _root: root,
            objects: ObjectStore::new(&settings),
            server,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.server.address())
    }
}

/// Sends a presigned request with exactly its headers.
async fn send(request: &PresignedRequest, body: Option<Vec<u8>>) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).expect("HTTP method");
    let mut builder = reqwest::Client::new().request(method, &request.url);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if let Some(body) = body {
        builder = builder.body(body);
    }
    builder.send().await.expect("presigned request is sent")
}

/// Deterministic bytes that differ from part to part.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A presigned PUT uses path-style addressing and the `auto` region, and carries no checksum
/// parameter that a third-party store might reject. Its object reads back through a presigned
/// GET.
#[tokio::test]
async fn presigned_put_then_get_round_trips() {
    let fixture = R2Fixture::start().await;
    let object = ObjectUrl::new(BUCKET, "in/talk.wav");
    let body = pattern(64 * 1024, 7);

    let put = fixture
        .objects
        .presign_put(&object, Some("audio/wav"), EXPIRY)
        .await
        .expect("presign PUT");

    assert_eq!(put.method, "PUT");
    let path_style = format!("{}/{BUCKET}/in/talk.wav?", fixture.endpoint());
    assert!(
        put.url.starts_with(&path_style),
        "not path-style: {}",
        put.url
    );
    assert!(
        put.url.contains("%2Fauto%2Fs3%2Faws4_request"),
        "region auto missing from the credential scope: {}",
        put.url
    );
    let lower_url = put.url.to_ascii_lowercase();
    assert!(!lower_url.contains("x-amz-checksum"), "{}", put.url);
    assert!(!lower_url.contains("x-amz-sdk-checksum"), "{}", put.url);
    assert!(
        put.headers.keys().all(|name| !name.contains("checksum")),
        "checksum header in {:?}",
        put.headers
    );
    assert_eq!(
        put.headers.get("content-type").map(String::as_str),
        Some("audio/wav")
    );

    let response = send(&put, Some(body.clone())).await;
    assert!(
        response.status().is_success(),
        "PUT rejected: {}",
        response.status()
    );

    let get = fixture
        .objects
        .presign_get(&object, EXPIRY)
        .await
        .expect("presign GET");
    let response = send(&get, None).await;
    assert_eq!(response.status(), 200);
    let fetched = response.bytes().await.expect("GET body");
    assert_eq!(fetched.len(), body.len());
    assert!(
        fetched.as_ref() == body.as_slice(),
        "GET returned other bytes"
    );
}

/// `object_size` returns the stored length, and `None` for a key that does not exist.
#[tokio::test]
async fn object_size_reports_length_and_absence() {
    let fixture = R2Fixture::start().await;
    let object = ObjectUrl::new(BUCKET, "out/size.mp3");
    let put = fixture
        .objects
        .presign_put(&object, None, EXPIRY)
        .await
        .expect("presign PUT");
    let response = send(&put, Some(pattern(12_345, 1))).await;
    assert!(response.status().is_success(), "{}", response.status());

    let size = fixture.objects.object_size(&object).await.expect("HEAD");
    let missing = fixture
        .objects
        .object_size(&ObjectUrl::new(BUCKET, "out/missing.mp3"))
        .await
        .expect("HEAD of a missing key");

    assert_eq!(size, Some(12_345));
    assert_eq!(missing, None);
}

/// A multipart upload through the SDK client (create, two parts, complete) stores the parts in
/// order, and a plain SDK GET returns them.
#[tokio::test]
async fn multipart_upload_through_the_sdk() {
    let fixture = R2Fixture::start().await;
    let client = fixture.objects.client();
    let key = "out/long.mp3";
    let parts = [pattern(PART_BYTES, 3), pattern(1000, 9)];

    let created = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .content_type("audio/mpeg")
        .send()
        .await
        .expect("create multipart upload");
    let upload_id = created.upload_id().expect("upload id").to_owned();

    let mut completed = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let number = i32::try_from(index + 1).expect("part number");
        let uploaded = client
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .unwrap_or_else(|err| panic!("upload part {number}: {err:?}"));
        completed.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag().map(str::to_owned))
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .expect("complete multipart upload");

    let expected: Vec<u8> = parts.concat();
    let size = fixture
        .objects
        .object_size(&ObjectUrl::new(BUCKET, key))
        .await
        .expect("HEAD");
    assert_eq!(size, Some(expected.len() as u64));

    let fetched = client
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("GET")
        .body
        .collect()
        .await
        .expect("GET body")
        .into_bytes();
    assert_eq!(fetched.len(), expected.len());
    assert!(
        fetched.as_ref() == expected.as_slice(),
        "parts came back out of order or changed"
    );
}

/// Without an endpoint the same client addresses AWS S3 virtual-hosted style in the given
/// region. Presigning happens locally, so no request leaves the machine.
#[tokio::test]
async fn aws_settings_presign_virtual_hosted_urls() {
    let settings = StoreSettings {
        endpoint: None,
        region: "eu-west-1".to_owned(),
        access_key_id: "AKIDEXAMPLE".to_owned(),
        secret_access_key: "example-secret".to_owned(),
        default_bucket: BUCKET.to_owned(),
    };
    let objects = ObjectStore::new(&settings);

    let get = objects
        .presign_get(&ObjectUrl::new(BUCKET, "in/a.wav"), EXPIRY)
        .await
        .expect("presign GET");

    assert!(
        get.url
            .starts_with("https://media.s3.eu-west-1.amazonaws.com/in/a.wav?"),
        "{}",
        get.url
    );
}
