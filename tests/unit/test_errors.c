#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tunnel/tunnel.h"

static void every_code_has_distinct_name_and_text(void **state) {
  (void)state;
  for (int e = -1; e > TUNNEL__ERR_LAST; e--) {
    const char *name = tunnel_err_name(e);
    assert_non_null(name);
    assert_string_not_equal(name, "TUNNEL_EUNKNOWN");
    assert_string_not_equal(tunnel_strerror(e), "unknown error");
    for (int f = e - 1; f > TUNNEL__ERR_LAST; f--)
      assert_string_not_equal(name, tunnel_err_name(f));
  }
  assert_string_equal(tunnel_err_name(TUNNEL_EPROTO), "TUNNEL_EPROTO");
  assert_string_equal(tunnel_err_name(0), "TUNNEL_OK");
  assert_string_equal(tunnel_err_name(12345), "TUNNEL_EUNKNOWN");
  assert_string_equal(tunnel_strerror(TUNNEL__ERR_LAST), "unknown error");
}

static void version_matches_header(void **state) {
  (void)state;
  assert_int_equal(tunnel_version(), TUNNEL_VERSION_HEX);
  assert_string_equal(tunnel_version_string(), TUNNEL_VERSION_STRING);
}

static void config_setters_validate(void **state) {
  (void)state;
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(NULL), TUNNEL_EINVAL);
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_max_streams(cfg, 0), TUNNEL_ERANGE);
  assert_int_equal(tunnel_config_set_max_streams(cfg, 10), 0);
  assert_int_equal(tunnel_config_set_stream_window(cfg, 1000), TUNNEL_ERANGE);
  assert_int_equal(tunnel_config_set_stream_window(cfg, 1u << 20), 0);
  assert_int_equal(tunnel_config_set_max_message_size(cfg, 10), TUNNEL_ERANGE);
  assert_int_equal(tunnel_config_set_max_control_backlog(cfg, 1), TUNNEL_ERANGE);
  assert_int_equal(tunnel_config_set_log(cfg, NULL, 7, NULL), TUNNEL_EINVAL);
  assert_int_equal(
      tunnel_config_set_allocator(cfg, NULL, NULL, (tunnel_free_fn)0, NULL), 0);
  assert_int_equal(tunnel_config_set_max_streams(NULL, 1), TUNNEL_EINVAL);
  tunnel_config_free(cfg);
  tunnel_config_free(NULL);
  assert_string_equal(tunnel_log_level_name(TUNNEL_LOG_WARN), "warn");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_code_has_distinct_name_and_text),
      cmocka_unit_test(version_matches_header),
      cmocka_unit_test(config_setters_validate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
