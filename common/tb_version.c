#include "tb_version.h"

/* TB_VERSION_STRING comes from the Makefile for this file alone */
#ifndef TB_VERSION_STRING
#define TB_VERSION_STRING "unknown"
#endif

const char *tb_version(void) { return TB_VERSION_STRING; }
